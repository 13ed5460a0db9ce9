/** Worker child of `dmm-nats`. */
import { serveWorker } from "../lib/worker-child.js";
import { startDmmWorker } from "./dmm-worker.js";

serveWorker(startDmmWorker("nats"));
