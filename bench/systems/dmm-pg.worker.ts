/** Worker child of `dmm-pg`. */
import { serveWorker } from "../lib/worker-child.js";
import { startDmmWorker } from "./dmm-worker.js";

serveWorker(startDmmWorker("postgres"));
