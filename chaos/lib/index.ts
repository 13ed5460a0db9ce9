/**
 * The chaos-test building blocks, re-exported from one place: a fault-injecting TCP proxy,
 * private nats-server and Postgres processes that a chaos run may stop, kill and restart, and
 * the waiting and port helpers they share. None of them touches the machine's shared Postgres
 * (5432) or nats-server (4222).
 */
export * from "./errors.js";
export * from "./nats-server.js";
export * from "./ports.js";
export * from "./postgres-server.js";
export * from "./proxy.js";
export * from "./random.js";
export * from "./wait.js";
