/// <reference types="vitest/config" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The console is served by the gateway on the same origin as gRPC-web and the signed
// file URLs; `npm run dev` proxies them to `make run`'s gateway.
const gateway = process.env.AIVERA_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  build: {
    target: "es2022",
    // Everything as files: the CSP allows no inline script, style or data: fonts.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: {
      "^/aivera\\.": { target: gateway, changeOrigin: false },
      "/files/": { target: gateway, changeOrigin: false },
    },
  },
  test: {
    environment: "happy-dom",
    include: ["tests/**/*.test.ts", "tests/**/*.test.tsx"],
  },
});
