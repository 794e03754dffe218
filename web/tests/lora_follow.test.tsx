import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { act, cleanup, fireEvent, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { StorageService } from "../src/gen/aivera/storage/v1/storage_pb.js";
import {
  ImageLoraExecutor,
  ImageLoraKind,
  ImageLoraSchema,
  ImageLoraService,
  ImageLoraStatus,
  type ImageLora,
} from "../src/gen/aivera/training/v1/image_loras_pb.js";
import { JobEventSchema, JobStatus, LogLevel, TrainingService, type JobEvent } from "../src/gen/aivera/training/v1/jobs_pb.js";
import { nextPollDelay } from "../src/studio/loras/follow";
import { LoraDetail } from "../src/studio/loras/LoraDetail";
import { reconnectDelay } from "../src/studio/useJobEvents";
import { apiFor, mount } from "./harness";

let visibility: DocumentVisibilityState = "visible";
Object.defineProperty(document, "visibilityState", { configurable: true, get: () => visibility });
const setVisibility = (v: DocumentVisibilityState) => {
  visibility = v;
  document.dispatchEvent(new Event("visibilitychange"));
};

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  visibility = "visible";
});

const ID = "11111111-1111-1111-1111-111111111111";
const JOB = "22222222-2222-2222-2222-222222222222";
const refs = Array.from({ length: 4 }, (_, i) => ({ id: `r${i}`, fileId: `f${i}`, width: 512, height: 512, sizeBytes: 1000n }));
const lora = (over: Omit<MessageInitShape<typeof ImageLoraSchema>, "$typeName"> = {}): ImageLora =>
  create(ImageLoraSchema, {
    id: ID,
    name: "Акварель",
    kind: ImageLoraKind.STYLE,
    triggerWord: "aqua",
    status: ImageLoraStatus.TRAINING,
    executor: ImageLoraExecutor.SIMULATE,
    jobId: JOB,
    attempt: 1,
    trainingSteps: 4,
    referenceImages: refs,
    ...over,
  });

const ev = (seq: number, event: MessageInitShape<typeof JobEventSchema>["event"]): JobEvent =>
  create(JobEventSchema, { sequence: BigInt(seq), attempt: 1, event });
const status = (seq: number, s: JobStatus) => ev(seq, { case: "statusChanged", value: { status: s } });
const metric = (seq: number, step: number, loss: number) =>
  ev(seq, { case: "metric", value: { step: BigInt(step), loss, learningRate: 1e-4, tokensPerSecond: 10 } });
const log = (seq: number, text: string) => ev(seq, { case: "log", value: { level: LogLevel.INFO, text } });
const final = (seq: number, s: JobStatus) => ev(seq, { case: "final", value: { id: JOB, status: s } });

describe("backoff", () => {
  it("reconnects after 1, 2, 4, 8 s, then every 15 s; polls after 3 s, slowing to 15 s", () => {
    expect([1, 2, 3, 4, 5, 9].map(reconnectDelay)).toEqual([1000, 2000, 4000, 8000, 15000, 15000]);
    const polls = [3000];
    for (let i = 0; i < 5; i++) polls.push(nextPollDelay(polls[polls.length - 1]!));
    expect(polls).toEqual([3000, 4500, 6750, 10125, 15000, 15000]);
  });
});

describe("a LOCAL/SIMULATE LoRA follows its training job", () => {
  it("shows the steps, the loss chart and the log as events come, without polling the LoRA", async () => {
    let gets = 0;
    const watched: bigint[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, { getImageLora: () => (gets++, lora()) });
      service(TrainingService, {
        async *watchJob(req) {
          watched.push(req.afterSequence);
          yield status(1, JobStatus.RUNNING);
          yield log(2, "loading the base model");
          yield metric(3, 1, 2.0);
          await gate;
          yield metric(4, 2, 1.5);
          yield log(5, "step 2 of 4");
          await new Promise(() => undefined); // the training goes on
        },
      });
    });
    mount(<LoraDetail loraId={ID} />, api);
    await waitFor(() => expect(screen.getByTestId("loss-chart").dataset.points).toBe("1"));
    expect(screen.getByTestId("lora-job-steps").textContent).toContain("Шаг 1 из 4");
    expect(screen.getByTestId("lora-job-logs").textContent).toBe("loading the base model");
    release();
    await waitFor(() => expect(screen.getByTestId("loss-chart").dataset.points).toBe("2"));
    expect(screen.getByTestId("lora-job-steps").textContent).toContain("Шаг 2 из 4");
    expect(screen.getByTestId("lora-job-logs").textContent).toBe("loading the base modelstep 2 of 4");
    // The job's steps move the LoRA's progress bar too (2 of 4).
    expect((screen.getByTestId("lora-progress") as HTMLProgressElement).value).toBe(0.5);
    expect(watched).toEqual([0n]);
    expect(gets).toBe(1);
  });

  it("reads the LoRA again once when the job ends, then offers Generate", async () => {
    let gets = 0;
    let ended = false;
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, {
        getImageLora: () => {
          gets += 1;
          return ended ? lora({ status: ImageLoraStatus.READY, progress: 1 }) : lora();
        },
        listGenerations: () => ({ generations: [] }),
      });
      service(TrainingService, {
        async *watchJob() {
          yield status(1, JobStatus.RUNNING);
          yield metric(2, 4, 0.9);
          ended = true;
          yield status(3, JobStatus.SUCCEEDED);
          yield final(3, JobStatus.SUCCEEDED);
        },
      });
    });
    mount(<LoraDetail loraId={ID} />, api);
    await waitFor(() => expect(screen.getByTestId("lora-detail").dataset.status).toBe("READY"));
    expect(gets).toBe(2); // the first read and one after the end (two terminal events)
    expect(screen.getByTestId("lora-ready").textContent).toContain("LoRA обучена");
    fireEvent.click(screen.getByTestId("generate-cta"));
    expect(document.activeElement).toBe(screen.getByTestId("gen-prompt"));
  });

  it("reattaches after the last sequence when the stream is UNAVAILABLE", async () => {
    const watched: bigint[] = [];
    const all = [status(1, JobStatus.RUNNING), metric(2, 1, 2.0), metric(3, 2, 1.6), log(4, "saved")];
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, { getImageLora: () => lora() });
      service(TrainingService, {
        async *watchJob(req) {
          watched.push(req.afterSequence);
          if (watched.length === 1) {
            yield* all.slice(0, 2);
            throw new ConnectError("worker gateway restarting", Code.Unavailable);
          }
          for (const e of all) if (e.sequence > req.afterSequence) yield e;
          await new Promise(() => undefined);
        },
      });
    });
    mount(<LoraDetail loraId={ID} />, api);
    await waitFor(() => expect(screen.getByTestId("loss-chart").dataset.points).toBe("2"), { timeout: 4000 });
    expect(watched).toEqual([0n, 2n]);
    expect(screen.getByTestId("lora-job-logs").textContent).toBe("saved");
  });
});

describe("a REPLICATE LoRA", () => {
  it("is polled gently while it trains, not while the tab is hidden, and no longer once it ends", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    let gets = 0;
    let current = lora({ executor: ImageLoraExecutor.REPLICATE, jobId: "", progress: 0.1 });
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, { getImageLora: () => (gets++, current) });
    });
    const advance = (ms: number) => act(() => vi.advanceTimersByTimeAsync(ms));
    mount(<LoraDetail loraId={ID} />, api);
    await advance(0);
    expect(gets).toBe(1);
    await advance(2999);
    expect(gets).toBe(1);
    await advance(1); // 3 s
    expect(gets).toBe(2);
    await advance(4499);
    expect(gets).toBe(2);
    await advance(1); // then 4.5 s: nothing changed
    expect(gets).toBe(3);
    await act(async () => setVisibility("hidden"));
    await advance(120_000);
    expect(gets).toBe(3);
    await act(async () => setVisibility("visible"));
    await advance(3000);
    const resumed = gets;
    expect(resumed).toBeGreaterThan(3);
    current = lora({ executor: ImageLoraExecutor.REPLICATE, jobId: "", status: ImageLoraStatus.READY, progress: 1 });
    await advance(15_000);
    expect(screen.getByTestId("lora-detail").dataset.status).toBe("READY");
    const atEnd = gets;
    await advance(120_000);
    expect(gets).toBe(atEnd);
    expect(screen.queryByTestId("lora-training")).toBeNull();
  });
});
