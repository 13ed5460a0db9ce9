/**
 * Ctrl-C handling for the example's long-running commands. The first SIGINT or SIGTERM asks for
 * a clean stop; a second one forces an exit. One Ctrl-C can arrive twice a few milliseconds
 * apart (npm and tsx each relay it to the process), so a repeat within a second counts as the
 * same press, not as "force".
 */
const DUPLICATE_WINDOW_MS = 1_000;

/** Calls `stop` on the first signal and `force` on a later, separate one. Returns an unsubscribe. */
export function onStopSignals(stop: () => void, force: () => void = () => process.exit(130)): () => void {
  let first = 0;
  const handler = () => {
    const now = Date.now();
    if (first === 0) {
      first = now;
      stop();
    } else if (now - first > DUPLICATE_WINDOW_MS) {
      force();
    }
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return () => {
    process.off("SIGINT", handler);
    process.off("SIGTERM", handler);
  };
}
