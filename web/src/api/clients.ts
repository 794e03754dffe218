import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "../gen/aivera/auth/v1/auth_pb.js";
import { ChatService } from "../gen/aivera/chat/v1/chat_pb.js";
import { RagService } from "../gen/aivera/rag/v1/rag_pb.js";
import { StorageService } from "../gen/aivera/storage/v1/storage_pb.js";
import { CatalogueService } from "../gen/aivera/training/v1/catalogue_pb.js";
import { CloneService } from "../gen/aivera/training/v1/clones_pb.js";
import { DatasetService } from "../gen/aivera/training/v1/datasets_pb.js";
import { ImageLoraService } from "../gen/aivera/training/v1/image_loras_pb.js";
import { TrainingService } from "../gen/aivera/training/v1/jobs_pb.js";
import { ModelService } from "../gen/aivera/training/v1/models_pb.js";
import { NotificationService } from "../gen/aivera/training/v1/notifications_pb.js";
import { Session } from "../auth/session";
import { currentLocale } from "../i18n/i18n";

/** The services localize error texts by this header. */
const language: Interceptor = (next) => (req) => {
  req.header.set("accept-language", currentLocale());
  return next(req);
};

export function makeTransport(session: Session, baseUrl: string): Transport {
  return createGrpcWebTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors: [language, session.interceptor()],
  });
}

export type Api = {
  session: Session;
  auth: Client<typeof AuthService>;
  chat: Client<typeof ChatService>;
  rag: Client<typeof RagService>;
  storage: Client<typeof StorageService>;
  datasets: Client<typeof DatasetService>;
  jobs: Client<typeof TrainingService>;
  catalogue: Client<typeof CatalogueService>;
  models: Client<typeof ModelService>;
  clones: Client<typeof CloneService>;
  notifications: Client<typeof NotificationService>;
  imageLoras: Client<typeof ImageLoraService>;
  /** The same session over another origin: the gateway's admin listener (admin only). */
  transportTo: (baseUrl: string) => Transport;
};

/** Every client over one gRPC-web transport on the page's own origin. */
export function makeApi(session: Session, baseUrl: string = window.location.origin): Api {
  const transport = makeTransport(session, baseUrl);
  session.bind(transport);
  return apiOver(session, transport, (url) => makeTransport(session, url));
}

/** Every client over `transport` (tests pass an in-memory router transport). */
export function apiOver(
  session: Session,
  transport: Transport,
  transportTo: (baseUrl: string) => Transport = () => transport,
): Api {
  return {
    session,
    auth: createClient(AuthService, transport),
    chat: createClient(ChatService, transport),
    rag: createClient(RagService, transport),
    storage: createClient(StorageService, transport),
    datasets: createClient(DatasetService, transport),
    jobs: createClient(TrainingService, transport),
    catalogue: createClient(CatalogueService, transport),
    models: createClient(ModelService, transport),
    clones: createClient(CloneService, transport),
    notifications: createClient(NotificationService, transport),
    imageLoras: createClient(ImageLoraService, transport),
    transportTo,
  };
}
