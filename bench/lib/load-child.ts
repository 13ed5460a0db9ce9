/**
 * Background-load child: runs a {@link PacedLoad} against a system's producer in a process of
 * its own, so that the benchmark process, which stamps commit times for latency samples, is
 * not slowed down by generating the load. Arguments: the adapter module URL and the system
 * name. Protocol: `loaded` → (`start` → `started`) → (`stop` → `stopped`).
 */
import { PacedLoad } from "./load.js";
import type { Producer, System, Target } from "./system.js";

/** Parent → load child. */
export type LoadParentMessage = { type: "start"; target: Target; ratePerS: number } | { type: "stop" };
/** Load child → parent. */
export type LoadChildMessage =
  | { type: "loaded" }
  | { type: "started" }
  | { type: "stopped"; achievedPerS: number; count: number }
  | { type: "error"; message: string };

const post = (msg: LoadChildMessage) => process.connected && process.send?.(msg);

async function main(): Promise<void> {
  const [moduleUrl, name] = process.argv.slice(2);
  const mod = (await import(moduleUrl!)) as { systems: System[] };
  const system = mod.systems.find((s) => s.name === name);
  if (!system) throw new Error(`${moduleUrl} exports no system "${name}"`);
  let producer: Producer | undefined;
  let load: PacedLoad | undefined;
  process.on("message", (raw: unknown) => {
    const msg = raw as LoadParentMessage;
    const handle = async () => {
      if (msg.type === "start") {
        producer = await system.openProducer(msg.target);
        load = new PacedLoad(producer, msg.ratePerS);
        load.start();
        post({ type: "started" });
      } else if (msg.type === "stop") {
        const achievedPerS = load ? await load.stop() : 0;
        await producer?.close();
        post({ type: "stopped", achievedPerS, count: load?.count ?? 0 });
        setTimeout(() => process.exit(0), 20);
      }
    };
    handle().catch(fail);
  });
  post({ type: "loaded" });
}

function fail(err: unknown): void {
  post({ type: "error", message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  setTimeout(() => process.exit(1), 50);
}

process.on("disconnect", () => process.exit(0));
process.on("unhandledRejection", fail);
main().catch(fail);
