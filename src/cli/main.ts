/**
 * Entry point of the `dmm` binary (bin/dmm.mjs imports the compiled form of this file).
 * Exit codes: 0 ok, 1 failure, 2 usage error, 3 schema version mismatch; see `dmm --help`.
 */
import { runCli } from "./run.js";

const controller = new AbortController();
const stop = () => {
  // A second Ctrl-C while stopping exits at once.
  if (controller.signal.aborted) process.exit(130);
  controller.abort();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

process.exitCode = await runCli(process.argv.slice(2), {
  out: process.stdout,
  err: process.stderr,
  env: process.env,
  signal: controller.signal,
});
process.off("SIGINT", stop);
process.off("SIGTERM", stop);
