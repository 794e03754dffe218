import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema, LocalizedMessageSchema } from "../gen/google/rpc/error_details_pb.js";
import { format, type Key, type Locale } from "../i18n/i18n";

/** What the console shows for a failed call. */
export type ErrorView = {
  text: string;
  code: Code;
  reason: string;
  /** Worth a retry button: the service or the network is down, or a limit may pass. */
  retryable: boolean;
  offline: boolean;
};

const FALLBACK: Partial<Record<Code, Key>> = {
  [Code.Unauthenticated]: "errorUnauthenticated",
  [Code.NotFound]: "errorNotFound",
  [Code.PermissionDenied]: "errorPermission",
  [Code.ResourceExhausted]: "errorExhausted",
  [Code.InvalidArgument]: "errorInvalid",
  [Code.FailedPrecondition]: "errorPrecondition",
  [Code.DeadlineExceeded]: "errorDeadline",
  [Code.Unavailable]: "unavailable",
};

/** A network failure before any answer (fetch rejected): connect reports it as Unknown. */
function isNetworkFailure(err: ConnectError): boolean {
  return err.code === Code.Unknown && err.cause instanceof TypeError;
}

/**
 * The user's text for an error: the status' google.rpc.LocalizedMessage in the user's
 * language (the services localize by the accept-language header every call carries),
 * else a text of the catalogue for the code. Never the raw developer message.
 */
export function describeError(reason: unknown, locale: Locale): ErrorView {
  const err = ConnectError.from(reason);
  const offline =
    isNetworkFailure(err) || (typeof navigator !== "undefined" && navigator.onLine === false);
  const info = err.findDetails(ErrorInfoSchema)[0];
  const localized = err.findDetails(LocalizedMessageSchema);
  const mine = localized.find((m) => m.locale.toLowerCase().startsWith(locale)) ?? localized[0];
  const code = offline ? Code.Unavailable : err.code;
  let text: string;
  if (offline) text = format(locale, "offline");
  else if (mine?.message) text = mine.message;
  else {
    const key = FALLBACK[err.code];
    text = key ? format(locale, key) : format(locale, "errorGeneric", { code: Code[err.code] });
  }
  return {
    text,
    code,
    reason: info?.reason ?? "",
    retryable: offline || code === Code.Unavailable || code === Code.ResourceExhausted || code === Code.DeadlineExceeded,
    offline,
  };
}
