import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { cleanup, fireEvent, screen, waitFor } from "@testing-library/react";
import { apiFor, mount } from "./harness";
import { afterEach, describe, expect, it } from "vitest";
import { AuthService, Provider, type SetProviderKeyRequest } from "../src/gen/aivera/auth/v1/auth_pb.js";
import { ChatService } from "../src/gen/aivera/chat/v1/chat_pb.js";
import { StorageService } from "../src/gen/aivera/storage/v1/storage_pb.js";
import {
  AspectRatio,
  GenerateImagesEventSchema,
  GenerationStatus,
  ImageLoraExecutor,
  ImageLoraKind,
  ImageLoraSchema,
  ImageLoraService,
  ImageLoraStatus,
  type GenerateImagesRequest,
  type ImageLora,
  type StartTrainingRequest,
} from "../src/gen/aivera/training/v1/image_loras_pb.js";
import { CostSummarySchema } from "../src/gen/aivera/training/v1/jobs_pb.js";
import { LocalizedMessageSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { costText } from "../src/studio/format";
import { SettingsPanel } from "../src/components/SettingsPanel";
import { CreateLora } from "../src/studio/loras/CreateLora";
import ImageLorasPage from "../src/studio/loras/ImageLorasPage";
import {
  checkFiles,
  emptyGeneration,
  foldGeneration,
  MAX_IMAGE_BYTES,
  promptWithTrigger,
  validTriggerWord,
} from "../src/studio/loras/rules";
import { parseStudio } from "../src/studio/route";

afterEach(() => {
  cleanup();
  window.location.hash = "";
});

const lora = (over: Omit<MessageInitShape<typeof ImageLoraSchema>, "$typeName"> = {}): ImageLora =>
  create(ImageLoraSchema, {
    id: "11111111-1111-1111-1111-111111111111",
    name: "Акварель",
    kind: ImageLoraKind.STYLE,
    triggerWord: "aqua",
    status: ImageLoraStatus.DRAFT,
    ...over,
  });

const refs = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ id: `r${i}`, fileId: `f${i}`, width: 512, height: 512, sizeBytes: 1000n, caption: "" }));

const file = (name: string, size: number, type: string) => ({ name, size, type });

describe("reference image rules", () => {
  it("accepts JPEG/PNG/WebP up to 10 MB and at most 15 in all, and says why not", () => {
    const files = [
      file("a.png", 100, "image/png"),
      file("b.gif", 100, "image/gif"),
      file("c.jpg", MAX_IMAGE_BYTES + 1, "image/jpeg"),
      file("d.webp", MAX_IMAGE_BYTES, "image/webp"),
      file("e.png", 100, "image/png"),
    ];
    const { accepted, problems } = checkFiles(13, files);
    expect(accepted.map((f) => f.name)).toEqual(["a.png", "d.webp"]);
    expect(problems).toEqual([
      { name: "b.gif", problem: "type" },
      { name: "c.jpg", problem: "size" },
      { name: "e.png", problem: "count" },
    ]);
  });

  it("checks trigger words as the server does", () => {
    expect(validTriggerWord("aqua_1")).toBe(true);
    for (const bad of ["", "ab", "1abc", "two words", "a".repeat(33), "кот"]) expect(validTriggerWord(bad), bad).toBe(false);
  });

  it("prepends the trigger word only when the prompt lacks it as a word", () => {
    expect(promptWithTrigger("a cat", "aqua")).toBe("aqua a cat");
    expect(promptWithTrigger("an AQUA cat", "aqua")).toBe("an AQUA cat");
    expect(promptWithTrigger("aquarium", "aqua")).toBe("aqua aquarium");
    expect(promptWithTrigger("  ", "aqua")).toBe("");
  });

  it("folds the generation stream: images by index as they land, once each, then done", () => {
    const ev = (e: MessageInitShape<typeof GenerateImagesEventSchema>["event"]) => create(GenerateImagesEventSchema, { event: e });
    let v = emptyGeneration();
    v = foldGeneration(v, ev({ case: "queued", value: { id: "g", prompt: "aqua a cat", seed: 7n, status: GenerationStatus.QUEUED } }));
    v = foldGeneration(v, ev({ case: "progress", value: { status: GenerationStatus.PROCESSING, fraction: 0.5 } }));
    v = foldGeneration(v, ev({ case: "image", value: { index: 1, url: "/files/b" } }));
    v = foldGeneration(v, ev({ case: "image", value: { index: 0, url: "/files/a" } }));
    v = foldGeneration(v, ev({ case: "image", value: { index: 1, url: "/files/b" } }));
    expect(v.images.map((i) => i.url)).toEqual(["/files/a", "/files/b"]);
    expect(v.fraction).toBe(0.5);
    expect(v.generation?.seed).toBe(7n);
    v = foldGeneration(v, ev({ case: "done", value: { id: "g", status: GenerationStatus.FAILED, error: "provider down" } }));
    expect(v.status).toBe(GenerationStatus.FAILED);
    expect(v.error).toBe("provider down");
    expect(v.images).toHaveLength(2); // the images that landed before the failure stay
  });

  it("routes #/studio/loras and one LoRA", () => {
    expect(parseStudio("#/studio/loras")).toEqual({ page: "loras", loraId: null });
    expect(parseStudio("#/studio/loras/abc-1")).toEqual({ page: "loras", loraId: "abc-1" });
  });
});

describe("image LoRA screens", () => {
  it("lists LoRAs with their status, progress while training and the simulated badge", async () => {
    const api = apiFor(({ service }) => {
      service(ImageLoraService, {
        listImageLoras: () => ({
          imageLoras: [
            lora({ id: "a", triggerWord: "aqua", status: ImageLoraStatus.TRAINING, progress: 0.4, simulated: true }),
            lora({ id: "b", triggerWord: "prod", status: ImageLoraStatus.READY }),
          ],
        }),
      });
    });
    mount(<ImageLorasPage loraId={null} />, api);
    await screen.findAllByTestId("lora");
    const rows = screen.getAllByTestId("lora");
    expect(rows.map((r) => r.dataset.status)).toEqual(["TRAINING", "READY"]);
    expect(rows[0]!.textContent).toContain("обучается");
    expect(rows[0]!.textContent).toContain("40%");
    expect(screen.getAllByTestId("lora-simulated")).toHaveLength(1);
    expect(screen.getAllByTestId("lora-progress")).toHaveLength(1);
  });

  it("create: checks images and the trigger word before sending, and shows the server's refusal", async () => {
    const created: string[] = [];
    const api = apiFor(({ service }) => {
      service(ImageLoraService, {
        createImageLora: (req) => {
          created.push(req.triggerWord);
          const err = new ConnectError("trigger word taken", Code.AlreadyExists);
          err.details.push({
            type: LocalizedMessageSchema.typeName,
            value: toBinary(LocalizedMessageSchema, create(LocalizedMessageSchema, { locale: "ru", message: "Слово-триггер уже занято." })),
          });
          throw err;
        },
      });
    });
    mount(<CreateLora onClose={() => undefined} />, api);
    fireEvent.change(screen.getByTestId("lora-name"), { target: { value: "Кот" } });
    fireEvent.change(screen.getByTestId("lora-trigger"), { target: { value: "1cat" } });
    expect((screen.getByTestId("lora-trigger") as HTMLInputElement).getAttribute("aria-invalid")).toBe("true");
    const pick = (files: File[]) => fireEvent.change(screen.getByTestId("lora-images-input"), { target: { files } });
    const png = (name: string) => new File([new Uint8Array(64)], name, { type: "image/png" });
    pick([png("1.png"), png("2.png"), png("3.png"), new File(["x"], "notes.txt", { type: "text/plain" })]);
    expect(screen.getAllByTestId("pending-image")).toHaveLength(3);
    expect(screen.getByTestId("image-problems").textContent).toContain("notes.txt: не JPEG, PNG или WebP");
    // Three images: training cannot start, and the page says how many it needs.
    fireEvent.change(screen.getByTestId("lora-trigger"), { target: { value: "cat_1" } });
    expect((screen.getByTestId("create-and-train") as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByTestId("create-lora").textContent).toContain("Для обучения нужно от 4 до 15 изображений.");
    pick([png("4.png")]);
    expect((screen.getByTestId("create-and-train") as HTMLButtonElement).disabled).toBe(false);
    fireEvent.click(screen.getByTestId("create-and-train"));
    expect((await screen.findByTestId("error")).textContent).toContain("Слово-триггер уже занято.");
    expect(created).toEqual(["cat_1"]);
  });

  it("detail: starts training with the chosen executor and steps, then follows it; cancel while it runs", async () => {
    let current = lora({ referenceImages: refs(4) });
    const starts: StartTrainingRequest[] = [];
    let cancelled = 0;
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, {
        getImageLora: () => current,
        startTraining: (req) => {
          starts.push(req);
          current = lora({
            referenceImages: refs(4),
            status: ImageLoraStatus.TRAINING,
            executor: ImageLoraExecutor.SIMULATE,
            simulated: true,
            progress: 0.25,
            attempt: 1,
          });
          return current;
        },
        cancelTraining: () => {
          cancelled += 1;
          current = lora({ referenceImages: refs(4), status: ImageLoraStatus.CANCELLED, executor: ImageLoraExecutor.SIMULATE });
          return current;
        },
      });
    });
    mount(<ImageLorasPage loraId={current.id} />, api);
    await screen.findByTestId("start-lora");
    expect(screen.getAllByTestId("reference-image")).toHaveLength(4);
    expect(screen.getByTestId("start-lora").textContent).toBe("Начать обучение");
    fireEvent.change(screen.getByTestId("lora-executor"), { target: { value: String(ImageLoraExecutor.SIMULATE) } });
    fireEvent.change(screen.getByTestId("lora-steps"), { target: { value: "40" } });
    fireEvent.click(screen.getByTestId("start-lora"));
    await waitFor(() => expect(screen.getByTestId("lora-detail").dataset.status).toBe("TRAINING"));
    expect(starts.map((s) => [s.executor, s.steps])).toEqual([[ImageLoraExecutor.SIMULATE, 40]]);
    expect(screen.getByTestId("lora-simulated")).toBeTruthy();
    expect(screen.getByTestId("lora-executor-name").textContent).toBe("Симуляция (без обучения)");
    fireEvent.click(screen.getByTestId("cancel-lora"));
    await waitFor(() => expect(screen.getByTestId("lora-detail").dataset.status).toBe("CANCELLED"));
    expect(cancelled).toBe(1);
    // A cancelled training can be retried with the same images.
    expect(screen.getByTestId("start-lora").textContent).toBe("Повторить обучение");
  });

  it("generate: the trigger word is shown, images appear as they land, the gallery lists generations", async () => {
    const ready = lora({ status: ImageLoraStatus.READY, referenceImages: refs(4), executor: ImageLoraExecutor.SIMULATE, simulated: true, progress: 1 });
    const asked: GenerateImagesRequest[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, {
        getImageLora: () => ready,
        listGenerations: () => ({ generations: [] }),
        async *generateImages(req) {
          asked.push(req);
          yield { event: { case: "queued", value: { id: "g1", prompt: "aqua a cat", seed: 5n, status: GenerationStatus.QUEUED } } };
          yield { event: { case: "image", value: { index: 0, url: "/files/g1-0", width: 512, height: 512 } } };
          await gate; // the second image lands later
          yield { event: { case: "image", value: { index: 1, url: "/files/g1-1", width: 512, height: 512 } } };
          yield { event: { case: "done", value: { id: "g1", prompt: "aqua a cat", seed: 5n, status: GenerationStatus.SUCCEEDED } } };
        },
      });
    });
    mount(<ImageLorasPage loraId={ready.id} />, api);
    const prompt = await screen.findByTestId("gen-prompt");
    fireEvent.change(prompt, { target: { value: "a cat" } });
    expect(screen.getByTestId("gen-trigger-hint").textContent).toContain("«aqua» будет добавлено");
    fireEvent.change(screen.getByTestId("gen-scale"), { target: { value: "1.5" } });
    fireEvent.change(screen.getByTestId("gen-outputs"), { target: { value: "2" } });
    fireEvent.change(screen.getByTestId("gen-aspect"), { target: { value: String(AspectRatio.ASPECT_RATIO_16_9) } });
    fireEvent.change(screen.getByTestId("gen-seed"), { target: { value: "5" } });
    // (submitted as the form: happy-dom's step check refuses 1.5 on a 0.05 step by a rounding error)
    fireEvent.submit(screen.getByTestId("gen-submit").closest("form")!);
    await waitFor(() => expect(screen.getAllByTestId("generated-image")).toHaveLength(1));
    expect(screen.getByTestId("gen-run").dataset.status).not.toBe("SUCCEEDED");
    release();
    await waitFor(() => expect(screen.getByTestId("gen-run").dataset.status).toBe("SUCCEEDED"));
    expect(screen.getAllByTestId("generated-image").map((i) => i.getAttribute("src"))).toEqual(["/files/g1-0", "/files/g1-1"]);
    expect(screen.getByTestId("gen-effective-prompt").textContent).toContain("aqua a cat");
    const req = asked[0]!;
    expect([req.prompt, req.loraScale, req.numOutputs, req.aspectRatio, req.seed]).toEqual([
      "a cat",
      1.5,
      2,
      AspectRatio.ASPECT_RATIO_16_9,
      5n,
    ]);
  });
});

describe("costs", () => {
  const billed = {
    items: [{ deviceType: "cpu", deviceSeconds: 75, hourlyRateMicros: 20_160_000n, amountMicros: 420_000n }],
    amountMicros: 420_000n,
    currencyCode: "USD",
  };

  it("costText: money and device time, nothing when nothing was billed", () => {
    expect(costText(undefined, "en")).toBeNull();
    expect(costText(create(CostSummarySchema, { currencyCode: "USD" }), "en")).toBeNull();
    expect(costText(create(CostSummarySchema, billed), "en")).toBe("$0.42 (cpu 1m 15s)");
  });

  it("a LOCAL generation shows what it cost when it ends, and in the gallery", async () => {
    const ready = lora({ status: ImageLoraStatus.READY, referenceImages: refs(4), executor: ImageLoraExecutor.LOCAL, progress: 1 });
    const done = { id: "g1", prompt: "aqua a cat", seed: 5n, status: GenerationStatus.SUCCEEDED, cost: billed };
    const api = apiFor(({ service }) => {
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
      service(ImageLoraService, {
        getImageLora: () => ready,
        listGenerations: () => ({ generations: [done, { id: "g0", prompt: "aqua a dog", status: GenerationStatus.SUCCEEDED }] }),
        async *generateImages() {
          yield { event: { case: "queued", value: { id: "g1", prompt: "aqua a cat", seed: 5n, status: GenerationStatus.QUEUED } } };
          yield { event: { case: "done", value: done } };
        },
      });
    });
    mount(<ImageLorasPage loraId={ready.id} />, api);
    await waitFor(() => expect(screen.getAllByTestId("generation")).toHaveLength(2));
    // (the ru locale puts a no-break space before the currency sign)
    const text = (e: HTMLElement) => (e.textContent ?? "").replace(/\s/g, " ");
    expect(screen.getAllByTestId("generation-cost").map(text)).toEqual([" · Стоимость: 0,42 $ (cpu 1m 15s)"]);
    fireEvent.change(await screen.findByTestId("gen-prompt"), { target: { value: "a cat" } });
    fireEvent.submit(screen.getByTestId("gen-submit").closest("form")!);
    await waitFor(() => expect(screen.getByTestId("gen-run").dataset.status).toBe("SUCCEEDED"));
    expect(text(screen.getByTestId("gen-cost"))).toBe("Стоимость: 0,42 $ (cpu 1m 15s)");
  });
});

describe("settings", () => {
  it("keeps the Replicate key apart from the Gemini key: status, save, never shown back", async () => {
    const keys = new Map<Provider, string>([[Provider.GEMINI, "gem-1234"]]);
    const sets: SetProviderKeyRequest[] = [];
    const status = (provider: Provider) => {
      const k = keys.get(provider);
      return { provider, isSet: k !== undefined, last4: k?.slice(-4) ?? "" };
    };
    const api = apiFor(({ service }) => {
      service(ChatService, { getSettings: () => ({}), listRoles: () => ({ roles: [] }) });
      service(AuthService, {
        getProviderKeyStatus: (r) => status(r.provider),
        setProviderKey: (r) => {
          sets.push(r);
          keys.set(r.provider, r.apiKey);
          return status(r.provider);
        },
      });
    });
    mount(<SettingsPanel onClose={() => undefined} />, api);
    await waitFor(() => expect(screen.getByTestId("key-status").textContent).toBe("Ключ задан: …1234"));
    await waitFor(() => expect(screen.getByTestId("replicate-key-status").textContent).toBe("Ключ не задан"));
    fireEvent.change(screen.getByTestId("replicate-key-input"), { target: { value: "r8_token_wxyz" } });
    fireEvent.click(screen.getByTestId("replicate-key-save"));
    await waitFor(() => expect(screen.getByTestId("replicate-key-status").textContent).toBe("Ключ задан: …wxyz"));
    expect(sets.map((r) => r.provider)).toEqual([Provider.REPLICATE]);
    expect((screen.getByTestId("replicate-key-input") as HTMLInputElement).value).toBe("");
    expect(screen.getByTestId("key-status").textContent).toBe("Ключ задан: …1234");
  });
});
