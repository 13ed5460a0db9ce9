/** The only module that imports the NATS client. */
export * from "./subjects.js";
export * from "./tokens.js";
