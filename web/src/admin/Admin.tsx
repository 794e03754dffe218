import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useMemo, useState } from "react";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { AuthAdminService, Role, UserStatus, type User } from "../gen/aivera/auth/v1/auth_pb.js";
import {
  PromptAdminService,
  SystemPromptName,
  type RolePrompt,
  type SystemSettings,
} from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";
import { adminBaseUrl } from "./endpoint";

export type AdminApi = { users: Client<typeof AuthAdminService>; prompts: Client<typeof PromptAdminService> };
type Tab = "users" | "prompts" | "roles" | "settings";
const TABS: Tab[] = ["users", "prompts", "roles", "settings"];
const mask = (...paths: string[]) => create(FieldMaskSchema, { paths });

/** Administration (role admin only; lazy-loaded). Its calls go to the gateway's admin
 *  listener with the same session. */
export default function Admin({ adminApi }: { adminApi?: AdminApi }) {
  const api = useApi();
  const { t } = useI18n();
  const [tab, setTab] = useState<Tab>("users");
  const base = useQuery({ queryKey: ["admin-url"], queryFn: () => adminBaseUrl(), enabled: adminApi === undefined, staleTime: Infinity });
  const clients = useMemo<AdminApi | null>(() => {
    if (adminApi) return adminApi;
    if (!base.data) return null;
    const transport = api.transportTo(base.data);
    return { users: createClient(AuthAdminService, transport), prompts: createClient(PromptAdminService, transport) };
  }, [adminApi, base.data, api]);
  return (
    <div className="studio" data-testid="admin">
      <nav className="tabs" aria-label={t("administration")}>
        {TABS.map((x) => (
          <button type="button" key={x} className={x === tab ? "tab active" : "tab"} onClick={() => setTab(x)} data-testid={`admin-tab-${x}`}>
            {t(`admin_${x}`)}
          </button>
        ))}
      </nav>
      <div className="studio-body">
        {clients === null ? (
          <p className="muted">{t("loading")}</p>
        ) : (
          <>
            {tab === "users" && <Users api={clients} />}
            {tab === "prompts" && <SystemPrompts api={clients} />}
            {tab === "roles" && <RolePrompts api={clients} />}
            {tab === "settings" && <Settings api={clients} />}
          </>
        )}
      </div>
    </div>
  );
}

/** A static token, shown once: the server keeps only its hash. */
function ShownOnce({ token, username, onClose }: { token: string; username: string; onClose: () => void }) {
  const { t } = useI18n();
  return (
    <div className="banner" role="status" data-testid="token-once">
      <div>
        <p>{t("tokenShownOnce", { name: username })}</p>
        <code className="token" data-testid="new-token">
          {token}
        </code>
      </div>
      <button type="button" onClick={() => void navigator.clipboard?.writeText(token)}>
        {t("copy")}
      </button>
      <button type="button" className="link" onClick={onClose}>
        {t("close")}
      </button>
    </div>
  );
}

function Users({ api }: { api: AdminApi }) {
  const { t } = useI18n();
  const qc = useQueryClient();
  const [username, setUsername] = useState("");
  const [role, setRole] = useState(Role.USER);
  const [shown, setShown] = useState<{ token: string; username: string } | null>(null);
  const list = useQuery({ queryKey: ["admin", "users"], queryFn: () => api.users.listUsers({ pageSize: 200 }) });
  const refresh = () => qc.invalidateQueries({ queryKey: ["admin", "users"] });
  const add = useMutation({
    mutationFn: () => api.users.createUser({ username, role }),
    onSuccess: (r) => {
      setShown({ token: r.staticToken, username: r.user?.username ?? username });
      setUsername("");
      void refresh();
    },
  });
  const rotate = useMutation({
    mutationFn: (u: User) => api.users.rotateStaticToken({ userId: u.id }),
    onSuccess: (r) => setShown({ token: r.staticToken, username: r.user?.username ?? "" }),
  });
  const toggle = useMutation({
    mutationFn: (u: User) =>
      api.users.updateUser({
        user: { id: u.id, status: u.status === UserStatus.DISABLED ? UserStatus.ACTIVE : UserStatus.DISABLED },
        updateMask: mask("status"),
      }),
    onSuccess: () => void refresh(),
  });
  return (
    <section className="page" data-testid="admin-users">
      <h2>{t("admin_users")}</h2>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <input value={username} onChange={(e) => setUsername(e.target.value)} placeholder={t("username")} aria-label={t("username")} data-testid="new-username" required />
        <select value={role} onChange={(e) => setRole(Number(e.target.value) as Role)} aria-label={t("role")}>
          <option value={Role.USER}>{t("roleUSER")}</option>
          <option value={Role.ADMIN}>{t("roleADMIN")}</option>
        </select>
        <button type="submit" className="primary" disabled={add.isPending} data-testid="create-user">
          {t("createUser")}
        </button>
      </form>
      {shown && <ShownOnce {...shown} onClose={() => setShown(null)} />}
      {[add.error, rotate.error, toggle.error, list.error].map((e, i) => (e ? <ErrorBanner key={i} error={e} /> : null))}
      <table className="table">
        <thead>
          <tr>
            <th>{t("username")}</th>
            <th>{t("role")}</th>
            <th>{t("status")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {list.data?.users.map((u) => (
            <tr key={u.id} data-testid="user-row" data-username={u.username}>
              <td>{u.username}</td>
              <td>{t(u.role === Role.ADMIN ? "roleADMIN" : "roleUSER")}</td>
              <td className={u.status === UserStatus.DISABLED ? "danger" : ""}>
                {t(u.status === UserStatus.DISABLED ? "userDisabled" : "userActive")}
              </td>
              <td className="row">
                <button type="button" onClick={() => toggle.mutate(u)} data-testid="toggle-user">
                  {t(u.status === UserStatus.DISABLED ? "enable" : "disable")}
                </button>
                <button type="button" onClick={() => window.confirm(t("confirmRotate", { name: u.username })) && rotate.mutate(u)} data-testid="rotate-token">
                  {t("rotateToken")}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

const PROMPT_NAMES = [SystemPromptName.LLM_SYSTEM, SystemPromptName.JSON_ANNOTATION, SystemPromptName.HTML_OCR];

function SystemPrompts({ api }: { api: AdminApi }) {
  const { t } = useI18n();
  const qc = useQueryClient();
  const [name, setName] = useState(SystemPromptName.LLM_SYSTEM);
  const [content, setContent] = useState("");
  const [description, setDescription] = useState("");
  const list = useQuery({
    queryKey: ["admin", "prompts", name],
    queryFn: () => api.prompts.listSystemPrompts({ name, includeAllVersions: true, pageSize: 100 }),
  });
  const refresh = () => qc.invalidateQueries({ queryKey: ["admin", "prompts"] });
  const add = useMutation({
    mutationFn: () => api.prompts.createSystemPromptVersion({ name, content, description, activate: false }),
    onSuccess: () => {
      setContent("");
      setDescription("");
      void refresh();
    },
  });
  const activate = useMutation({ mutationFn: (id: string) => api.prompts.activateSystemPrompt({ id }), onSuccess: () => void refresh() });
  const versions = [...(list.data?.systemPrompts ?? [])].sort((a, b) => b.version - a.version);
  const active = versions.find((p) => p.isActive);
  return (
    <section className="page" data-testid="admin-prompts">
      <h2>{t("admin_prompts")}</h2>
      <select value={name} onChange={(e) => setName(Number(e.target.value) as SystemPromptName)} aria-label={t("promptName")}>
        {PROMPT_NAMES.map((n) => (
          <option key={n} value={n}>
            {SystemPromptName[n]}
          </option>
        ))}
      </select>
      {[list.error, add.error, activate.error].map((e, i) => (e ? <ErrorBanner key={i} error={e} /> : null))}
      <ul className="plain versions">
        {versions.map((p) => (
          <li key={p.id} data-testid="prompt-version" data-active={p.isActive}>
            <div className="row">
              <strong>v{p.version}</strong>
              {p.isActive ? <span className="chip ok">{t("active")}</span> : null}
              <span className="muted small">{p.description}</span>
              <span className="spacer" />
              {!p.isActive && (
                <button type="button" onClick={() => activate.mutate(p.id)}>
                  {active && p.version < active.version ? t("rollBack") : t("activate")}
                </button>
              )}
            </div>
            <details>
              <summary className="small">{t("content")}</summary>
              <pre className="prompt">{p.content}</pre>
            </details>
          </li>
        ))}
      </ul>
      <form
        className="card wide"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <label>
          {t("newVersion")}
          <textarea value={content} onChange={(e) => setContent(e.target.value)} rows={6} required />
        </label>
        <label>
          {t("description")}
          <input value={description} onChange={(e) => setDescription(e.target.value)} />
        </label>
        <button type="submit" className="primary" disabled={add.isPending}>
          {t("save")}
        </button>
      </form>
    </section>
  );
}

function RolePrompts({ api }: { api: AdminApi }) {
  const { t } = useI18n();
  const qc = useQueryClient();
  const [name, setName] = useState("");
  const [content, setContent] = useState("");
  const list = useQuery({ queryKey: ["admin", "roles"], queryFn: () => api.prompts.listRolePrompts({ pageSize: 100 }) });
  const refresh = () => qc.invalidateQueries({ queryKey: ["admin", "roles"] });
  const add = useMutation({
    mutationFn: () => api.prompts.createRolePrompt({ name, content }),
    onSuccess: () => {
      setName("");
      setContent("");
      void refresh();
    },
  });
  return (
    <section className="page" data-testid="admin-roles">
      <h2>{t("admin_roles")}</h2>
      {[list.error, add.error].map((e, i) => (e ? <ErrorBanner key={i} error={e} /> : null))}
      {list.data?.rolePrompts.map((r) => <RoleEditor key={r.id} api={api} role={r} onSaved={() => void refresh()} />)}
      <form
        className="card wide"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <label>
          {t("name")}
          <input value={name} onChange={(e) => setName(e.target.value)} required />
        </label>
        <label>
          {t("content")}
          <textarea value={content} onChange={(e) => setContent(e.target.value)} rows={4} required />
        </label>
        <button type="submit" className="primary" disabled={add.isPending}>
          {t("createRole")}
        </button>
      </form>
    </section>
  );
}

function RoleEditor({ api, role, onSaved }: { api: AdminApi; role: RolePrompt; onSaved: () => void }) {
  const { t } = useI18n();
  const [content, setContent] = useState(role.content);
  const save = useMutation({
    mutationFn: (patch: { content?: string; isActive?: boolean }) =>
      api.prompts.updateRolePrompt({
        rolePrompt: { id: role.id, ...patch },
        updateMask: mask(...("content" in patch ? ["content"] : []), ...("isActive" in patch ? ["is_active"] : [])),
      }),
    onSuccess: onSaved,
  });
  return (
    <article className="card wide" data-testid="role-prompt">
      <div className="row">
        <strong>{role.name}</strong>
        <span className="muted small">v{role.version}</span>
        <span className="spacer" />
        <label className="radio">
          <input type="checkbox" checked={role.isActive} onChange={(e) => save.mutate({ isActive: e.target.checked })} />
          {t("active")}
        </label>
      </div>
      <textarea value={content} onChange={(e) => setContent(e.target.value)} rows={4} />
      <div className="row">
        <button type="button" disabled={content === role.content || save.isPending} onClick={() => save.mutate({ content })}>
          {t("save")}
        </button>
      </div>
      {save.error && <ErrorBanner error={save.error} />}
    </article>
  );
}

function Settings({ api }: { api: AdminApi }) {
  const { t } = useI18n();
  const qc = useQueryClient();
  const current = useQuery({ queryKey: ["admin", "settings"], queryFn: () => api.prompts.getSystemSettings({}) });
  const [draft, setDraft] = useState<Partial<Pick<SystemSettings, "flashModel" | "proModel" | "localModelEnabled">>>({});
  const save = useMutation({
    mutationFn: () =>
      api.prompts.updateSystemSettings({
        settings: draft,
        updateMask: mask(
          ...Object.keys(draft).map((k) => ({ flashModel: "flash_model", proModel: "pro_model", localModelEnabled: "local_model_enabled" })[k] ?? k),
        ),
      }),
    onSuccess: (s) => {
      qc.setQueryData(["admin", "settings"], s);
      setDraft({});
    },
  });
  const s = current.data;
  return (
    <section className="page" data-testid="admin-settings">
      <h2>{t("admin_settings")}</h2>
      {current.error && <ErrorBanner error={current.error} onRetry={() => void current.refetch()} />}
      {s && (
        <form
          className="card wide"
          onSubmit={(e) => {
            e.preventDefault();
            save.mutate();
          }}
        >
          <label>
            {t("flashModel")}
            <select value={draft.flashModel ?? s.flashModel} onChange={(e) => setDraft({ ...draft, flashModel: e.target.value })}>
              {s.allowedModels.map((m) => (
                <option key={m}>{m}</option>
              ))}
            </select>
          </label>
          <label>
            {t("proModel")}
            <select value={draft.proModel ?? s.proModel} onChange={(e) => setDraft({ ...draft, proModel: e.target.value })}>
              {s.allowedModels.map((m) => (
                <option key={m}>{m}</option>
              ))}
            </select>
          </label>
          <label className="radio">
            <input
              type="checkbox"
              checked={draft.localModelEnabled ?? s.localModelEnabled}
              onChange={(e) => setDraft({ ...draft, localModelEnabled: e.target.checked })}
            />
            {t("localModelEnabled")}
          </label>
          <button type="submit" className="primary" disabled={Object.keys(draft).length === 0 || save.isPending}>
            {t("save")}
          </button>
          {save.error && <ErrorBanner error={save.error} />}
        </form>
      )}
    </section>
  );
}
