import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { useApi } from "../api/context";
import { Provider } from "../gen/aivera/auth/v1/auth_pb.js";
import { ModelProfile, type UserSettings } from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";

/** The user's settings: model profile and role (chat), and the Gemini and Replicate keys
 *  (auth), which are written but never read back — only whether one is set and its last 4
 *  characters. */
export function SettingsPanel({ onClose }: { onClose: () => void }) {
  const { chat } = useApi();
  const { t } = useI18n();
  const queryClient = useQueryClient();
  const settings = useQuery({ queryKey: ["settings"], queryFn: () => chat.getSettings({}) });
  const roles = useQuery({ queryKey: ["roles"], queryFn: () => chat.listRoles({ pageSize: 200 }) });
  const [saved, setSaved] = useState(false);

  const update = useMutation({
    mutationFn: (change: { modelProfile?: ModelProfile; selectedRolePromptId?: string }) =>
      chat.updateSettings({
        settings: change,
        updateMask: { paths: Object.keys(change).map((k) => (k === "modelProfile" ? "model_profile" : "selected_role_prompt_id")) },
      }),
    // Shown at once; put back if the service refuses it.
    onMutate: (change) => {
      const before = queryClient.getQueryData<UserSettings>(["settings"]);
      if (before) queryClient.setQueryData(["settings"], { ...before, ...change });
      setSaved(false);
      return { before };
    },
    onError: (_err, _change, context) => {
      if (context?.before) queryClient.setQueryData(["settings"], context.before);
    },
    onSuccess: (next) => {
      queryClient.setQueryData(["settings"], next);
      setSaved(true);
    },
  });
  const error = settings.error ?? roles.error ?? update.error;

  return (
    <aside className="settings" aria-label={t("settings")} data-testid="settings">
      <div className="row">
        <h2>{t("settings")}</h2>
        <span className="spacer" />
        <button type="button" className="link" onClick={onClose}>
          {t("close")}
        </button>
      </div>
      {error && (
        <ErrorBanner
          error={error}
          onRetry={() => void queryClient.invalidateQueries()}
          onDismiss={() => update.reset()}
        />
      )}
      {saved && <p className="ok small">{t("saved")}</p>}
      <fieldset>
        <legend>{t("modelProfile")}</legend>
        {[ModelProfile.SIMPLE, ModelProfile.COMPLEX].map((p) => (
          <label key={p} className="radio">
            <input
              type="radio"
              name="profile"
              checked={settings.data?.modelProfile === p}
              onChange={() => update.mutate({ modelProfile: p })}
            />
            {t(p === ModelProfile.SIMPLE ? "profileSIMPLE" : "profileCOMPLEX")}
          </label>
        ))}
      </fieldset>
      <label>
        {t("role")}
        <select
          value={settings.data?.selectedRolePromptId ?? ""}
          onChange={(e) => update.mutate({ selectedRolePromptId: e.target.value })}
        >
          <option value="">{t("noRole")}</option>
          {(roles.data?.roles ?? []).map((r) => (
            <option key={r.id} value={r.id} title={r.description}>
              {r.name}
            </option>
          ))}
        </select>
      </label>
      <ProviderKeyForm provider={Provider.GEMINI} legend={t("geminiKey")} testId="key" onSaved={() => setSaved(true)} />
      <ProviderKeyForm provider={Provider.REPLICATE} legend={t("replicateKey")} testId="replicate-key" onSaved={() => setSaved(true)} />
    </aside>
  );
}

/** One provider's key: whether it is set (last 4 characters), replace, delete. */
function ProviderKeyForm({
  provider,
  legend,
  testId,
  onSaved,
}: {
  provider: Provider;
  legend: string;
  testId: string;
  onSaved: () => void;
}) {
  const { auth } = useApi();
  const { t } = useI18n();
  const queryClient = useQueryClient();
  const queryKey = ["provider-key", provider];
  const key = useQuery({ queryKey, queryFn: () => auth.getProviderKeyStatus({ provider }) });
  const [newKey, setNewKey] = useState("");
  const setKey = useMutation({
    mutationFn: (apiKey: string) => auth.setProviderKey({ provider, apiKey }),
    onSuccess: (status) => {
      setNewKey(""); // the key leaves the page's memory once stored
      queryClient.setQueryData(queryKey, status);
      onSaved();
    },
  });
  const deleteKey = useMutation({
    mutationFn: () => auth.deleteProviderKey({ provider }),
    onSuccess: () => void queryClient.invalidateQueries({ queryKey }),
  });
  const error = key.error ?? setKey.error ?? deleteKey.error;
  const submitKey = (e: FormEvent) => {
    e.preventDefault();
    if (newKey.trim()) setKey.mutate(newKey.trim());
  };
  return (
    <form onSubmit={submitKey} autoComplete="off">
      <fieldset>
        <legend>{legend}</legend>
        {error && <ErrorBanner error={error} onDismiss={() => (setKey.reset(), deleteKey.reset())} />}
        <p data-testid={`${testId}-status`}>{key.data?.isSet ? t("keySet", { last4: key.data.last4 }) : t("keyNotSet")}</p>
        <label>
          {t("newKey")}
          <input
            type="password"
            value={newKey}
            onChange={(e) => setNewKey(e.target.value)}
            spellCheck={false}
            data-testid={`${testId}-input`}
          />
        </label>
        <div className="row">
          <button type="submit" disabled={!newKey.trim() || setKey.isPending} data-testid={`${testId}-save`}>
            {key.data?.isSet ? t("replaceKey") : t("setKey")}
          </button>
          {key.data?.isSet && (
            <button type="button" className="danger" onClick={() => deleteKey.mutate()}>
              {t("deleteKey")}
            </button>
          )}
        </div>
      </fieldset>
    </form>
  );
}
