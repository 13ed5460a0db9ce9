/**
 * Entry point of the `dmm` binary (bin/dmm.mjs imports the compiled form of this file).
 * Exit codes: 0 ok, 1 failure, 2 usage error, 3 schema version mismatch; see `dmm --help`.
 */
import { runCli } from "./run.js";

const controller = new AbortController();
let firstSignalAt = 0;
const stop = () => {
  const now = Date.now();
  if (firstSignalAt === 0) {
    firstSignalAt = now;
    controller.abort();
  } else if (now - firstSignalAt > 1_000) {
    // A second, separate Ctrl-C exits at once. (One press can arrive twice a few milliseconds
    // apart when npm or tsx relay it; that repeat is ignored.)
    process.exit(130);
  }
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
