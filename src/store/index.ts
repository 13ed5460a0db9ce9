/** The store: the only module that issues SQL. One verb per function. */
export * from "./db.js";
export * from "./migrate.js";
export * from "./notify.js";
export * from "./claim.js";
export * from "./finish.js";
export * from "./outbox.js";
export * from "./sweep.js";
export * from "./workers.js";
export * from "./matter.js";
export * from "./fence.js";
