import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterEach, describe, expect, it, vi } from "vitest";
import { memoryStore, Session } from "../src/auth/session";
import { AuthService } from "../src/gen/aivera/auth/v1/auth_pb.js";

/** An in-memory AuthService with the real contract's behaviour: single-use refresh tokens,
 *  access tokens checked by GetCurrentUser, Logout revoking the session. */
function authServer(ttlSeconds = 60) {
  const state = { access: "", refresh: "", n: 0, logouts: [] as string[], refreshes: 0, headers: [] as string[] };
  const issue = () => {
    state.n += 1;
    state.access = `access-${state.n}`;
    state.refresh = `avr_${state.n}`;
    return { accessToken: state.access, refreshToken: state.refresh, expiresIn: BigInt(ttlSeconds), user: { username: "anna" } };
  };
  const transport = createRouterTransport(({ service }) => {
    service(AuthService, {
      exchangeStaticToken: (req) => {
        if (req.staticToken !== "avs_good") throw new ConnectError("bad token", Code.Unauthenticated);
        return issue();
      },
      refreshToken: (req) => {
        state.refreshes += 1;
        if (req.refreshToken !== state.refresh) throw new ConnectError("revoked", Code.Unauthenticated);
        return issue();
      },
      logout: (req, ctx) => {
        state.logouts.push(req.refreshToken);
        state.headers.push(ctx.requestHeader.get("authorization") ?? "");
        state.refresh = "";
        return {};
      },
      getCurrentUser: (_req, ctx) => {
        state.headers.push(ctx.requestHeader.get("authorization") ?? "");
        if (ctx.requestHeader.get("authorization") !== `Bearer ${state.access}`) {
          throw new ConnectError("expired", Code.Unauthenticated);
        }
        return { username: "anna" };
      },
    });
  });
  return { state, transport };
}

function signedSession(ttl = 60) {
  const server = authServer(ttl);
  const store = memoryStore();
  const session = new Session(store);
  session.bind(server.transport);
  return { server, store, session };
}

afterEach(() => vi.useRealTimers());

describe("Session", () => {
  it("keeps the access token in memory only; the store holds the refresh token", async () => {
    const { session, store } = signedSession();
    await session.signIn("avs_good");
    expect(session.accessToken()).toBe("access-1");
    expect(store.get()).toBe("avr_1");
    expect(session.user?.username).toBe("anna");
  });

  it("a wrong static token is UNAUTHENTICATED and signs nobody in", async () => {
    const { session } = signedSession();
    await expect(session.signIn("avs_bad")).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect(session.signedIn).toBe(false);
  });

  it("refreshes silently before the access token expires", async () => {
    vi.useFakeTimers();
    const { session, server } = signedSession(10);
    await session.signIn("avs_good");
    await vi.advanceTimersByTimeAsync(7_900);
    expect(server.state.refreshes).toBe(0);
    await vi.advanceTimersByTimeAsync(200); // 80% of 10 s
    expect(server.state.refreshes).toBe(1);
    expect(session.accessToken()).toBe("access-2");
  });

  it("concurrent refreshes share one call (the refresh token is single-use)", async () => {
    const { session, server } = signedSession();
    await session.signIn("avs_good");
    const results = await Promise.all([session.refresh(), session.refresh(), session.refresh()]);
    expect(results).toEqual([true, true, true]);
    expect(server.state.refreshes).toBe(1);
  });

  it("sends the bearer token and, on UNAUTHENTICATED, refreshes once and repeats the call", async () => {
    const server = authServer();
    const session = new Session(memoryStore());
    session.bind(server.transport);
    await session.signIn("avs_good");
    const intercepted = createRouterTransport(
      ({ service }) => {
        service(AuthService, {
          getCurrentUser: async (req, ctx) => {
            // Forward to the server with the caller's headers.
            const auth = createClient(AuthService, server.transport);
            return auth.getCurrentUser(req, { headers: { authorization: ctx.requestHeader.get("authorization") ?? "" } });
          },
        });
      },
      { transport: { interceptors: [session.interceptor()] } },
    );
    const client = createClient(AuthService, intercepted);
    expect((await client.getCurrentUser({})).username).toBe("anna");
    // The server rotates the access token behind the page's back (as after expiry).
    server.state.access = "rotated-elsewhere";
    server.state.refresh = "avr_1";
    expect((await client.getCurrentUser({})).username).toBe("anna");
    expect(server.state.refreshes).toBe(1);
    expect(server.state.headers.at(-1)).toBe("Bearer access-2");
  });

  it("a refresh the server refuses ends the session as expired", async () => {
    const { session, server, store } = signedSession();
    await session.signIn("avs_good");
    server.state.refresh = "revoked-family";
    expect(await session.refresh()).toBe(false);
    expect(session.signedIn).toBe(false);
    expect(session.expired).toBe(true);
    expect(store.get()).toBeNull();
  });

  it("sign-out revokes the session on the server and forgets every token", async () => {
    const server = authServer();
    const store = memoryStore();
    const session = new Session(store);
    // Logout is an authenticated call: it must carry the bearer token.
    const withHeader = createRouterTransport(
      ({ service }) => {
        service(AuthService, {
          logout: (req, ctx) =>
            createClient(AuthService, server.transport).logout(req, {
              headers: { authorization: ctx.requestHeader.get("authorization") ?? "" },
            }),
          exchangeStaticToken: (req) => createClient(AuthService, server.transport).exchangeStaticToken(req),
        });
      },
      { transport: { interceptors: [session.interceptor()] } },
    );
    session.bind(withHeader);
    await session.signIn("avs_good");
    await session.signOut();
    expect(server.state.logouts).toEqual(["avr_1"]);
    expect(server.state.headers).toEqual(["Bearer access-1"]);
    expect(session.signedIn).toBe(false);
    expect(session.expired).toBe(false);
    expect(store.get()).toBeNull();
  });
});
