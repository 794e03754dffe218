import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { CloneStatus, type Clone } from "../gen/aivera/training/v1/clones_pb.js";
import { useI18n } from "../i18n/i18n";
import { CloneKnowledge } from "./Knowledge";

/** Clones: create from a base model and a persona, pick the trained adapter it answers
 *  with, and open a chat with it in the chat view. */
export function ClonesPage() {
  const api = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const [name, setName] = useState("");
  const [persona, setPersona] = useState("");
  const [baseModel, setBaseModel] = useState("");
  const list = useQuery({ queryKey: ["clones"], queryFn: () => api.clones.listClones({ pageSize: 100 }) });
  const catalogue = useQuery({ queryKey: ["base-models"], queryFn: () => api.catalogue.listBaseModels({ pageSize: 100 }) });
  const add = useMutation({
    mutationFn: () => api.clones.createClone({ name, personaPrompt: persona, baseModel }),
    onSuccess: () => {
      setName("");
      setPersona("");
      void qc.invalidateQueries({ queryKey: ["clones"] });
    },
  });
  return (
    <section className="page" data-testid="clones-page">
      <h2>{t("clones")}</h2>
      <form
        className="card wide"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <label>
          {t("name")}
          <input value={name} onChange={(e) => setName(e.target.value)} required data-testid="clone-name" />
        </label>
        <label>
          {t("persona")}
          <textarea value={persona} onChange={(e) => setPersona(e.target.value)} rows={3} data-testid="clone-persona" />
        </label>
        <label>
          {t("baseModel")}
          <select value={baseModel} onChange={(e) => setBaseModel(e.target.value)}>
            <option value="">{t("serverDefault")}</option>
            {catalogue.data?.baseModels.map((m) => (
              <option key={m.name} value={m.name}>
                {m.displayName || m.name}
              </option>
            ))}
          </select>
        </label>
        <div className="row">
          <button type="submit" className="primary" disabled={add.isPending || name.trim() === ""}>
            {t("createClone")}
          </button>
        </div>
        {add.error && <ErrorBanner error={add.error} />}
      </form>
      {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
      {list.data?.clones.length === 0 && <p className="muted">{t("noClones")}</p>}
      {list.data?.clones.map((c) => <CloneCard key={c.id} clone={c} />)}
    </section>
  );
}

function CloneCard({ clone: c }: { clone: Clone }) {
  const api = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const models = useQuery({ queryKey: ["models"], queryFn: () => api.models.listModels({ pageSize: 100 }) });
  const setModel = useMutation({
    mutationFn: (activeModelId: string) =>
      api.clones.updateClone({ clone: { id: c.id, activeModelId }, updateMask: create(FieldMaskSchema, { paths: ["active_model_id"] }) }),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["clones"] }),
  });
  const chat = useMutation({
    mutationFn: () => api.chat.createChat({ cloneId: c.id, title: c.name }),
    onSuccess: (created) => {
      void qc.invalidateQueries({ queryKey: ["chats"] });
      window.location.hash = `#/chat/${created.id}`;
    },
  });
  const remove = useMutation({
    mutationFn: () => api.clones.deleteClone({ id: c.id }),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["clones"] }),
  });
  const status = CloneStatus[c.status] ?? "UNSPECIFIED";
  const usable = models.data?.models.filter((m) => m.baseModel === c.baseModel) ?? [];
  return (
    <article className="card wide" data-testid="clone" data-status={status}>
      <div className="row">
        <strong>{c.name}</strong>
        <span className={`chip status-${status}`}>{t(`clone${status}` as "cloneREADY")}</span>
        <span className="muted small">{c.baseModel}</span>
        <span className="spacer" />
        <button type="button" className="primary" onClick={() => chat.mutate()} disabled={chat.isPending} data-testid="clone-chat">
          {t("chatWithClone")}
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => window.confirm(t("confirmDeleteClone", { name: c.name })) && remove.mutate()}
        >
          {t("delete")}
        </button>
      </div>
      {c.personaPrompt && <blockquote>{c.personaPrompt}</blockquote>}
      <label>
        {t("activeModel")}
        <select value={c.activeModelId} onChange={(e) => setModel.mutate(e.target.value)} data-testid="clone-model">
          <option value="">{t("noActiveModel")}</option>
          {usable.map((m) => (
            <option key={m.id} value={m.id}>
              {m.name || m.id.slice(0, 8)}
            </option>
          ))}
        </select>
      </label>
      <CloneKnowledge clone={c} />
      {setModel.error && <ErrorBanner error={setModel.error} />}
      {chat.error && <ErrorBanner error={chat.error} />}
      {remove.error && <ErrorBanner error={remove.error} />}
    </article>
  );
}
