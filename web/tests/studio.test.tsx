import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { cleanup, fireEvent, screen, waitFor } from "@testing-library/react";
import { apiFor, mount } from "./harness";
import { afterEach, describe, expect, it, vi } from "vitest";
import Admin from "../src/admin/Admin";
import { App } from "../src/App";
import type { Api } from "../src/api/clients";
import { NotificationBell } from "../src/components/NotificationBell";
import { AuthAdminService, AuthService, Role, UserStatus } from "../src/gen/aivera/auth/v1/auth_pb.js";
import { ChatService, PromptAdminService } from "../src/gen/aivera/chat/v1/chat_pb.js";
import { CatalogueService } from "../src/gen/aivera/training/v1/catalogue_pb.js";
import { DatasetService, DatasetStatus } from "../src/gen/aivera/training/v1/datasets_pb.js";
import {
  JobEventSchema,
  JobStatus,
  TrainingMethod,
  TrainingService,
  type CreateJobRequest,
  type JobEvent,
} from "../src/gen/aivera/training/v1/jobs_pb.js";
import { NotificationService } from "../src/gen/aivera/training/v1/notifications_pb.js";
import { I18nProvider } from "../src/i18n/i18n";
import { DatasetsPage } from "../src/studio/DatasetsPage";
import { emptyJob, foldJob } from "../src/studio/jobState";
import { JobMonitor } from "../src/studio/JobMonitor";
import { LossChart } from "../src/studio/LossChart";
import { ClonesPage } from "../src/studio/ClonesPage";
import { ModelsPage } from "../src/studio/ModelsPage";
import { splitSpans } from "../src/studio/Preview";
import { parseStudio } from "../src/studio/route";
import { CloneService, CloneStatus } from "../src/gen/aivera/training/v1/clones_pb.js";
import { ModelService } from "../src/gen/aivera/training/v1/models_pb.js";
import { DocumentStatus, RagService } from "../src/gen/aivera/rag/v1/rag_pb.js";
import { TrainPage } from "../src/studio/TrainPage";

afterEach(() => {
  cleanup();
  window.location.hash = "";
});

const metric = (seq: number, step: number, loss: number, extra: Partial<{ attempt: number; evalLoss: number }> = {}): JobEvent =>
  create(JobEventSchema, {
    sequence: BigInt(seq),
    attempt: extra.attempt ?? 1,
    event: { case: "metric", value: { step: BigInt(step), loss, learningRate: 1e-4, tokensPerSecond: 100, evalLoss: extra.evalLoss } },
  });
const statusEv = (seq: number, status: JobStatus): JobEvent =>
  create(JobEventSchema, { sequence: BigInt(seq), attempt: 1, event: { case: "statusChanged", value: { status } } });

describe("job events fold", () => {
  it("adds points in step order, ignores duplicates, and starts over on a new attempt", () => {
    let v = emptyJob();
    for (const e of [statusEv(1, JobStatus.RUNNING), metric(3, 2, 1.5), metric(2, 1, 2.0), metric(3, 2, 9)]) v = foldJob(v, e);
    // seq 2 after seq 3 is a duplicate of an older event: ignored; seq 3 twice: once.
    expect(v.points.map((p) => [p.step, p.loss])).toEqual([[2, 1.5]]);
    expect(v.status).toBe(JobStatus.RUNNING);
    v = foldJob(v, metric(4, 3, 1.2));
    v = foldJob(v, metric(5, 1, 2.1, { attempt: 2 }));
    expect(v.attempt).toBe(2);
    expect(v.points.map((p) => p.step)).toEqual([1]);
    v = foldJob(v, create(JobEventSchema, { sequence: 6n, attempt: 2, event: { case: "final", value: { id: "j", status: JobStatus.SUCCEEDED } } }));
    expect(v.status).toBe(JobStatus.SUCCEEDED);
    expect(v.job?.id).toBe("j");
  });

  it("takes the live events (cost, final) that carry the last stored sequence", () => {
    const cost = (seq: number, micros: bigint) =>
      create(JobEventSchema, {
        sequence: BigInt(seq),
        event: { case: "cost", value: { amountMicros: micros, currencyCode: "USD", items: [{ deviceType: "cpu", deviceSeconds: 10 }] } },
      });
    let v = foldJob(emptyJob(), statusEv(1, JobStatus.RUNNING));
    v = foldJob(v, cost(1, 100n));
    expect(v.cost?.amountMicros).toBe(100n);
    v = foldJob(v, metric(2, 1, 2.0));
    v = foldJob(v, cost(2, 250n));
    expect([v.cost?.amountMicros, v.lastSeq, v.points.length]).toEqual([250n, 2n, 1]);
    // The server's `final` repeats the last stored sequence: it still ends the view.
    v = foldJob(v, create(JobEventSchema, { sequence: 2n, event: { case: "final", value: { id: "j", status: JobStatus.SUCCEEDED, cost: { amountMicros: 300n } } } }));
    expect([v.status, v.job?.id, v.cost?.amountMicros, v.lastSeq]).toEqual([JobStatus.SUCCEEDED, "j", 300n, 2n]);
  });
});

describe("loss chart", () => {
  it("draws one vertex per point and an eval line only when there is eval loss", () => {
    const { rerender } = mount(<LossChart points={[]} totalSteps={10} />, apiFor(() => undefined));
    expect(screen.getByTestId("chart-empty")).toBeTruthy();
    const pts = [1, 2, 3].map((s) => ({ step: s, loss: 3 - s, evalLoss: s === 3 ? 0.9 : null, lr: 0, tps: 0 }));
    rerender(
      <I18nProvider initial="ru">
        <LossChart points={pts} totalSteps={10} />
      </I18nProvider>,
    );
    expect(screen.getByTestId("loss-chart").dataset.points).toBe("3");
    expect(screen.getByTestId("loss-line").getAttribute("d")?.match(/[ML]/g)).toHaveLength(3);
    expect(screen.getByTestId("eval-line")).toBeTruthy();
  });
});

describe("studio routes", () => {
  it("parses the studio's hashes and nothing else", () => {
    expect(parseStudio("#/studio")).toEqual({ page: "datasets" });
    expect(parseStudio("#/studio/jobs/j-1")).toEqual({ page: "jobs", jobId: "j-1" });
    expect(parseStudio("#/studio/train/d1")).toEqual({ page: "train", datasetId: "d1" });
    expect(parseStudio("#/chat/c1")).toBeNull();
  });
});

describe("datasets page", () => {
  it("shows the errors with their line numbers and the statistics, and deletes", async () => {
    const deleted: string[] = [];
    const api = apiFor(({ service }) => {
      service(DatasetService, {
        listDatasets: () => ({
          datasets: [
            { id: "d1", name: "broken", status: DatasetStatus.ERROR, errorCount: 1, errors: [{ line: 2, message: "invalid JSON" }] },
            { id: "d2", name: "good", status: DatasetStatus.READY, stats: { exampleCount: 24n, totalTokens: 900n, minTokens: 10, meanTokens: 37.5, maxTokens: 60 } },
          ],
        }),
        deleteDataset: (req) => {
          deleted.push(req.id);
          return {};
        },
      });
    });
    vi.stubGlobal("confirm", () => true);
    mount(<DatasetsPage />, api);
    const err = await screen.findByTestId("dataset-error");
    expect(err.dataset.line).toBe("2");
    expect(err.textContent).toBe("строка 2: invalid JSON");
    expect(screen.getByTestId("dataset-stats").textContent).toContain("24");
    fireEvent.click(screen.getAllByRole("button", { name: "Удалить" })[0] as HTMLElement);
    await waitFor(() => expect(deleted).toEqual(["d1"]));
  });
});

describe("configure training", () => {
  it("estimates the form's job, shows the server's effective defaults, then starts it", async () => {
    const asked: CreateJobRequest[] = [];
    const api = apiFor(({ service }) => {
      service(DatasetService, { listDatasets: () => ({ datasets: [{ id: "d2", name: "good", status: DatasetStatus.READY }] }) });
      service(CatalogueService, {
        listBaseModels: () => ({ baseModels: [{ name: "tiny", displayName: "Tiny", isDefault: true, methods: [TrainingMethod.LORA] }] }),
      });
      service(TrainingService, {
        estimateJob: (req) => {
          if (req.job) asked.push(req.job);
          return { totalSteps: 30n, hyperparameters: { learningRate: 0.0002, loraRank: 8 }, fitsInMemory: true, withinQuota: true };
        },
        createJob: (req) => {
          asked.push(req);
          return { id: "job-1", status: JobStatus.QUEUED };
        },
      });
    });
    mount(<TrainPage datasetId={null} />, api);
    await screen.findByRole("option", { name: "Tiny" });
    fireEvent.change(screen.getByTestId("hp-maxSteps"), { target: { value: "30" } });
    expect((screen.getByTestId("start-job") as HTMLButtonElement).disabled).toBe(true); // estimate first
    fireEvent.click(screen.getByTestId("estimate"));
    expect((await screen.findByTestId("est-steps")).textContent).toBe("30");
    expect((screen.getByTestId("hp-loraRank") as HTMLInputElement).placeholder).toBe("8");
    // The QLoRA choice is off: the catalogue says this model trains with LoRA only.
    expect((screen.getByRole("radio", { name: "QLORA" }) as HTMLInputElement).disabled).toBe(true);
    fireEvent.click(screen.getByTestId("start-job"));
    await waitFor(() => expect(window.location.hash).toBe("#/studio/jobs/job-1"));
    expect(asked.map((r) => [r.datasetId, r.baseModel, r.method, r.hyperparameters?.duration])).toEqual([
      ["d2", "tiny", TrainingMethod.LORA, { case: "maxSteps", value: 30 }],
      ["d2", "tiny", TrainingMethod.LORA, { case: "maxSteps", value: 30 }],
    ]);
  });
});

describe("job monitor", () => {
  it("grows the chart as events arrive and reattaches after the last sequence when the stream breaks", async () => {
    const watched: bigint[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const all = [statusEv(1, JobStatus.RUNNING), metric(2, 1, 2.0), metric(3, 2, 1.6), metric(4, 3, 1.3), metric(5, 4, 1.1)];
    const api = apiFor(({ service }) => {
      service(TrainingService, {
        getJob: () => ({ id: "j1", name: "support-bot", status: JobStatus.RUNNING, progress: { steps: { done: 0n, total: 4n } } }),
        async *watchJob(req) {
          watched.push(req.afterSequence);
          if (watched.length === 1) {
            yield* all.slice(0, 3);
            await gate;
            throw new ConnectError("lost", Code.Unavailable);
          }
          for (const e of all) if (e.sequence > req.afterSequence) yield e;
          yield create(JobEventSchema, { sequence: 6n, attempt: 1, event: { case: "final", value: { id: "j1", name: "support-bot", status: JobStatus.SUCCEEDED } } });
        },
      });
    });
    mount(<JobMonitor jobId="j1" />, api);
    await waitFor(() => expect(screen.getByTestId("loss-chart").dataset.points).toBe("2"));
    expect(screen.getByTestId("job-status").textContent).toBe("идёт");
    expect(screen.getByTestId("cancel-job")).toBeTruthy();
    release();
    await waitFor(() => expect(screen.getByTestId("loss-chart").dataset.points).toBe("4"), { timeout: 3000 });
    await waitFor(() => expect(screen.getByTestId("job-status").textContent).toBe("готово"));
    expect(watched).toEqual([0n, 3n]);
    expect(screen.queryByTestId("cancel-job")).toBeNull();
    expect(screen.getByTestId("job-steps").textContent).toContain("Шаг 4 из 4");
  });
});

describe("job monitor cost", () => {
  it("shows what the job has cost so far from the stream while it runs", async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const api = apiFor(({ service }) => {
      service(TrainingService, {
        getJob: () => ({ id: "j1", status: JobStatus.RUNNING }),
        async *watchJob() {
          yield statusEv(1, JobStatus.RUNNING);
          yield create(JobEventSchema, { sequence: 1n, event: { case: "cost", value: { amountMicros: 1_250_000n, currencyCode: "USD", items: [{ deviceType: "cpu", deviceSeconds: 60 }] } } });
          await gate;
        },
      });
    });
    mount(<JobMonitor jobId="j1" />, api);
    await waitFor(() => expect((screen.getByTestId("job-cost").textContent ?? "").replace(/\s/g, " ")).toBe("1,25 $"));
    release();
  });
});

describe("job retry", () => {
  it("retries a failed job and follows its new attempt from the start", async () => {
    const watched: bigint[] = [];
    const retried: string[] = [];
    const api = apiFor(({ service }) => {
      service(TrainingService, {
        getJob: () => ({ id: "j1", status: retried.length ? JobStatus.RUNNING : JobStatus.FAILED }),
        async *watchJob(req) {
          watched.push(req.afterSequence);
          yield metric(1, 1, 2.0);
          if (retried.length === 0) {
            yield create(JobEventSchema, { sequence: 2n, attempt: 1, event: { case: "statusChanged", value: { status: JobStatus.FAILED, error: { message: "out of memory" } } } });
            return;
          }
          yield create(JobEventSchema, { sequence: 2n, attempt: 1, event: { case: "statusChanged", value: { status: JobStatus.FAILED } } });
          yield metric(3, 1, 1.9, { attempt: 2 });
          yield metric(4, 2, 1.5, { attempt: 2 });
          yield create(JobEventSchema, { sequence: 5n, attempt: 2, event: { case: "final", value: { id: "j1", status: JobStatus.SUCCEEDED, attempt: 2 } } });
        },
        retryJob: (req) => {
          retried.push(req.id);
          return { id: req.id, status: JobStatus.QUEUED, attempt: 2 };
        },
      });
    });
    mount(<JobMonitor jobId="j1" />, api);
    expect((await screen.findByText("out of memory")).className).toBe("danger");
    fireEvent.click(screen.getByTestId("retry-job"));
    await waitFor(() => expect(screen.getByTestId("job-status").textContent).toBe("готово"));
    expect(retried).toEqual(["j1"]);
    expect(watched).toEqual([0n, 0n]);
    // The new attempt's curve only.
    expect(screen.getByTestId("loss-chart").dataset.points).toBe("2");
    expect(screen.getByText("попытка 2")).toBeTruthy();
  });
});

describe("administration", () => {
  function signedInAs(role: Role): Api {
    return apiFor(({ service }) => {
      service(AuthService, {
        exchangeStaticToken: () => ({ accessToken: "a", refreshToken: "avr_1", expiresIn: 3600n, user: { username: "u", role } }),
      });
      service(ChatService, { listChats: () => ({ chats: [] }) });
      service(NotificationService, { listNotifications: () => ({ notifications: [] }), async *watchNotifications() {} });
    });
  }

  it("is offered to an admin only", async () => {
    for (const role of [Role.USER, Role.ADMIN]) {
      const api = signedInAs(role);
      mount(<App />, api);
      fireEvent.change(screen.getByLabelText("Статический токен"), { target: { value: "avs_x" } });
      fireEvent.click(screen.getByRole("button", { name: "Войти" }));
      await screen.findByTestId("whoami");
      expect(screen.queryByTestId("nav-admin") !== null).toBe(role === Role.ADMIN);
      cleanup();
    }
  });

  it("creates a user and shows the static token once", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(AuthAdminService, {
        listUsers: () => ({ users: [{ id: "u1", username: "anna", role: Role.USER, status: UserStatus.ACTIVE }] }),
        createUser: (req) => ({ user: { id: "u2", username: req.username, role: req.role }, staticToken: "avs_shown_once" }),
      });
      service(PromptAdminService, {});
    });
    const adminApi = { users: createClient(AuthAdminService, transport), prompts: createClient(PromptAdminService, transport) };
    mount(<Admin adminApi={adminApi} />, apiFor(() => undefined));
    await screen.findByText("anna");
    fireEvent.change(screen.getByTestId("new-username"), { target: { value: "boris" } });
    fireEvent.click(screen.getByTestId("create-user"));
    expect((await screen.findByTestId("new-token")).textContent).toBe("avs_shown_once");
    fireEvent.click(screen.getByRole("button", { name: "Закрыть" }));
    expect(screen.queryByTestId("new-token")).toBeNull();
  });
});

describe("notifications bell", () => {
  it("counts unread notifications and refreshes when one arrives live", async () => {
    let listed = 0;
    let push: () => void = () => undefined;
    const arrived = new Promise<void>((r) => (push = r));
    const api = apiFor(({ service }) => {
      service(NotificationService, {
        listNotifications: () => {
          listed += 1;
          const n = [{ id: "n1", title: "Датасет готов", read: false }];
          return { notifications: listed > 1 ? [...n, { id: "n2", title: "Обучение завершено", read: false, jobId: "j1" }] : n };
        },
        async *watchNotifications() {
          await arrived;
          yield { event: { case: "notification", value: { id: "n2" } } };
          await new Promise(() => undefined);
        },
      });
    });
    mount(<NotificationBell />, api);
    expect((await screen.findByTestId("unread")).textContent).toBe("1");
    push();
    await waitFor(() => expect(screen.getByTestId("unread").textContent).toBe("2"));
    fireEvent.click(screen.getByTestId("bell"));
    expect(screen.getAllByTestId("notification")).toHaveLength(2);
  });
});

describe("dataset preview", () => {
  it("marks the trained spans by code point offsets, not UTF-16 units", () => {
    // "😀" is one code point (two UTF-16 units): the server's offsets count it once.
    const text = "<u>😀 hi</u><a>ok</a>";
    const start = Array.from(text).indexOf("o");
    expect(splitSpans(text, [{ start, end: start + 2 }])).toEqual([
      { text: "<u>😀 hi</u><a>", trained: false },
      { text: "ok", trained: true },
      { text: "</a>", trained: false },
    ]);
  });

  it("shows the examples rendered by the server with the trained part highlighted", async () => {
    const api = apiFor(({ service }) => {
      service(DatasetService, {
        listDatasets: () => ({ datasets: [{ id: "d2", name: "good", status: DatasetStatus.READY }] }),
        previewDataset: () => ({
          examples: [{ index: 0, line: 1, text: "<user>q<assistant>answer", tokenCount: 9, trainedTokenCount: 2, trainedSpans: [{ start: 18, end: 24 }] }],
        }),
      });
    });
    mount(<DatasetsPage />, api);
    fireEvent.click(await screen.findByTestId("preview"));
    const preview = await screen.findByTestId("dataset-preview");
    expect(preview.querySelector("mark")?.textContent).toBe("answer");
  });
});

describe("models and clones", () => {
  it("lists models with their metrics and gets signed download links", async () => {
    const api = apiFor(({ service }) => {
      service(ModelService, {
        listModels: () => ({ models: [{ id: "m1", name: "support-bot", baseModel: "tiny", steps: 30n, finalLoss: 0.3456, sizeBytes: 2048n }] }),
        createModelDownloadUrl: (req) => ({ urls: [{ name: "adapter_model.safetensors", url: `/files/${req.id}-f1?sig=x`, sizeBytes: 1024n }] }),
      });
    });
    mount(<ModelsPage />, api);
    const row = await screen.findByTestId("model");
    expect(row.textContent).toContain("0.3456");
    fireEvent.click(screen.getByTestId("model-download"));
    const link = (await screen.findByTestId("download-links")).querySelector("a");
    expect(link?.getAttribute("href")).toBe("/files/m1-f1?sig=x");
  });

  it("creates a clone and opens a chat with it", async () => {
    const created: string[] = [];
    const clones = [{ id: "k1", name: "Анна", personaPrompt: "Вежливый консультант", baseModel: "tiny", status: CloneStatus.READY }];
    const api = apiFor(({ service }) => {
      service(CloneService, {
        listClones: () => ({ clones }),
        createClone: (req) => {
          const c = { id: "k2", name: req.name, personaPrompt: req.personaPrompt, baseModel: "tiny", status: CloneStatus.DRAFT };
          clones.push(c);
          return c;
        },
      });
      service(CatalogueService, { listBaseModels: () => ({ baseModels: [] }) });
      service(ModelService, { listModels: () => ({ models: [] }) });
      service(ChatService, {
        createChat: (req) => {
          created.push(req.cloneId);
          return { id: "chat-9", cloneId: req.cloneId };
        },
      });
    });
    mount(<ClonesPage />, api);
    await screen.findByText("Анна");
    fireEvent.change(screen.getByTestId("clone-name"), { target: { value: "Борис" } });
    fireEvent.change(screen.getByTestId("clone-persona"), { target: { value: "Инженер" } });
    fireEvent.click(screen.getByRole("button", { name: "Создать клона" }));
    await screen.findByText("Борис");
    fireEvent.click(screen.getAllByTestId("clone-chat")[0] as HTMLElement);
    await waitFor(() => expect(window.location.hash).toBe("#/chat/chat-9"));
    expect(created).toEqual(["k1"]);
  });
});

describe("clone knowledge", () => {
  it("shows ingestion progress until the document is ready, and removes it", async () => {
    let listed = 0;
    const removed: string[] = [];
    const api = apiFor(({ service }) => {
      service(CloneService, {
        listClones: () => ({ clones: [{ id: "k1", name: "Анна", baseModel: "tiny", knowledgeBaseId: "kb1", status: CloneStatus.READY }] }),
        removeKnowledge: (req) => {
          removed.push(req.documentId);
          return {};
        },
      });
      service(CatalogueService, { listBaseModels: () => ({ baseModels: [] }) });
      service(ModelService, { listModels: () => ({ models: [] }) });
      service(RagService, {
        listDocuments: (req) => {
          listed += 1;
          expect(req.knowledgeBaseId).toBe("kb1");
          const status = listed > 1 ? DocumentStatus.READY : DocumentStatus.PROCESSING;
          return { documents: [{ id: "doc1", filename: "manual.pdf", status }] };
        },
      });
    });
    mount(<ClonesPage />, api);
    expect((await screen.findByTestId("knowledge-doc")).dataset.status).toBe("PROCESSING");
    await waitFor(() => expect(screen.getByTestId("knowledge-doc").dataset.status).toBe("READY"), { timeout: 4000 });
    fireEvent.click(screen.getAllByRole("button", { name: "Удалить" }).at(-1) as HTMLElement);
    await waitFor(() => expect(removed).toEqual(["doc1"]));
  });
});
