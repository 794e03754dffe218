import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { AuthService, type User } from "../gen/aivera/auth/v1/auth_pb.js";

/** Where the refresh token lives between page loads of one tab (never the access token). */
export interface TokenStore {
  get(): string | null;
  set(token: string | null): void;
}

/** sessionStorage: one tab's session survives a reload (to reattach to a running turn)
 *  and ends with the tab. The CSP allows no foreign script to read it. */
export const tabStore: TokenStore = {
  get: () => {
    try {
      return sessionStorage.getItem("aivera.refresh");
    } catch {
      return null;
    }
  },
  set: (token) => {
    try {
      if (token === null) sessionStorage.removeItem("aivera.refresh");
      else sessionStorage.setItem("aivera.refresh", token);
    } catch {
      // storage blocked: the session lasts as long as the page
    }
  },
};

export const memoryStore = (): TokenStore => {
  let value: string | null = null;
  return { get: () => value, set: (t) => (value = t) };
};

type Listener = () => void;
const RETRY_REFRESH_MS = 10_000;
const PUBLIC_METHODS = new Set(["ExchangeStaticToken", "RefreshToken", "GetJwks"]);

/**
 * The signed-in session: the access token in memory only, refreshed silently before it
 * expires (at 80% of its lifetime) and once when a call answers UNAUTHENTICATED; the
 * refresh token rotates on every use. Sign-out revokes the session on the server.
 * Tokens go only into the authorization header: never into a URL or a log line.
 */
export class Session {
  private access: string | null = null;
  private refreshToken: string | null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<boolean> | null = null;
  private listeners = new Set<Listener>();
  user: User | null = null;
  expired = false;
  private auth: Client<typeof AuthService> | null = null;

  constructor(private readonly store: TokenStore) {
    this.refreshToken = store.get();
  }

  /** The auth client; the session needs the transport that carries its own header. */
  bind(transport: Transport): void {
    this.auth = createClient(AuthService, transport);
  }

  private client(): Client<typeof AuthService> {
    if (this.auth === null) throw new Error("Session.bind(transport) first");
    return this.auth;
  }

  get signedIn(): boolean {
    return this.access !== null;
  }

  get hasRefreshToken(): boolean {
    return this.refreshToken !== null;
  }

  accessToken(): string | null {
    return this.access;
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    for (const l of this.listeners) l();
  }

  private accept(access: string, refresh: string, expiresIn: bigint, user: User | undefined): void {
    this.access = access;
    this.refreshToken = refresh;
    this.store.set(refresh);
    this.user = user ?? this.user;
    this.expired = false;
    const ttlMs = Number(expiresIn) * 1000;
    if (this.timer !== null) clearTimeout(this.timer);
    // Refresh well before expiry: at 80% of the lifetime, at least a second from now.
    this.schedule(Math.max(1000, ttlMs * 0.8));
    this.emit();
  }

  private schedule(delayMs: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      // Offline or the auth service down: try again shortly; the access token may still
      // be valid, and a call answered UNAUTHENTICATED refreshes by itself.
      this.refresh().catch(() => this.schedule(RETRY_REFRESH_MS));
    }, delayMs);
  }

  async signIn(staticToken: string): Promise<void> {
    const resp = await this.client().exchangeStaticToken({ staticToken });
    this.accept(resp.accessToken, resp.refreshToken, resp.expiresIn, resp.user);
  }

  /** Rotates the tokens; one refresh at a time (concurrent callers share it). False when
   *  the session is over (then the console asks for the static token again). */
  refresh(): Promise<boolean> {
    if (this.inflight) return this.inflight;
    const token = this.refreshToken;
    if (token === null) return Promise.resolve(false);
    this.inflight = (async () => {
      try {
        const resp = await this.client().refreshToken({ refreshToken: token });
        this.accept(resp.accessToken, resp.refreshToken, resp.expiresIn, resp.user);
        return true;
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code === Code.Unauthenticated || code === Code.InvalidArgument) {
          this.clear(true);
          return false;
        }
        throw err; // offline or unavailable: the session may still be good
      } finally {
        this.inflight = null;
      }
    })();
    return this.inflight;
  }

  /** Revokes the session on the server, then forgets every token. */
  async signOut(): Promise<void> {
    const token = this.refreshToken;
    try {
      if (token !== null && this.access !== null) await this.client().logout({ refreshToken: token });
    } finally {
      this.clear(false);
    }
  }

  private clear(expired: boolean): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.access = null;
    this.refreshToken = null;
    this.store.set(null);
    this.user = null;
    this.expired = expired;
    this.emit();
  }

  /** Adds the bearer token to every call but the public ones, and after an
   *  UNAUTHENTICATED answer refreshes once and repeats the call. */
  interceptor(): Interceptor {
    return (next) => async (req) => {
      const method = req.method.name;
      if (PUBLIC_METHODS.has(method)) return next(req);
      const used = this.access;
      if (used !== null) req.header.set("authorization", `Bearer ${used}`);
      try {
        return await next(req);
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code !== Code.Unauthenticated || method === "Logout") throw err;
        // Another call may have refreshed meanwhile; else refresh now.
        const fresh = this.access !== used ? true : await this.refresh();
        if (!fresh || this.access === null) throw err;
        req.header.set("authorization", `Bearer ${this.access}`);
        return next(req);
      }
    };
  }

  /** For tests: when the next silent refresh is due. */
  get refreshScheduled(): boolean {
    return this.timer !== null;
  }
}
