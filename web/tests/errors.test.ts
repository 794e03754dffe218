import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { describeError } from "../src/api/errors";
import { ErrorInfoSchema, LocalizedMessageSchema } from "../src/gen/google/rpc/error_details_pb.js";

// An error as connect-web decodes it from grpc-status-details-bin: each detail is the
// type name and the serialized message (a google.protobuf.Any unpacked lazily).
function statusError(code: Code, details: { locale: string; message: string }[], reason = "") {
  const err = new ConnectError("developer text", code);
  if (reason) {
    const info = create(ErrorInfoSchema, { reason, domain: "chat.aivera.dev" });
    err.details.push({ type: ErrorInfoSchema.typeName, value: toBinary(ErrorInfoSchema, info) });
  }
  for (const d of details) {
    const msg = create(LocalizedMessageSchema, d);
    err.details.push({ type: LocalizedMessageSchema.typeName, value: toBinary(LocalizedMessageSchema, msg) });
  }
  return err;
}

describe("describeError", () => {
  it("shows the service's localized message in the user's language, never the developer text", () => {
    const err = statusError(Code.FailedPrecondition, [{ locale: "ru", message: "Задайте ключ Gemini" }], "PROVIDER_KEY_MISSING");
    const view = describeError(err, "ru");
    expect(view.text).toBe("Задайте ключ Gemini");
    expect(view.reason).toBe("PROVIDER_KEY_MISSING");
    expect(view.retryable).toBe(false);
  });

  it("picks the message of the user's locale when several are attached", () => {
    const err = statusError(Code.InvalidArgument, [
      { locale: "ru", message: "Слишком длинное название" },
      { locale: "en", message: "The title is too long" },
    ]);
    expect(describeError(err, "en").text).toBe("The title is too long");
    expect(describeError(err, "ru").text).toBe("Слишком длинное название");
  });

  it("falls back to the catalogue text of the code in the chosen language", () => {
    const err = new ConnectError("chat 123 not found", Code.NotFound);
    expect(describeError(err, "en").text).toBe("Not found.");
    expect(describeError(err, "ru").text).toBe("Не найдено.");
  });

  it("marks UNAVAILABLE and a failed fetch as retryable, the latter as offline", () => {
    const down = describeError(new ConnectError("db down", Code.Unavailable), "en");
    expect(down).toMatchObject({ retryable: true, offline: false, text: "The service is temporarily unavailable." });
    const net = describeError(new ConnectError("fetch failed", Code.Unknown, undefined, undefined, new TypeError("Failed to fetch")), "en");
    expect(net).toMatchObject({ retryable: true, offline: true, text: "No connection to the server." });
  });
});
