/**
 * Loopback port helpers. Everything in `chaos/lib` listens on 127.0.0.1 only, so a chaos run
 * never exposes its servers and never collides with the machine's shared services by address.
 */
import net from "node:net";

/** The only address `chaos/lib` binds to. */
export const LOOPBACK = "127.0.0.1";

/**
 * Returns a TCP port that was free a moment ago: listens on port 0, reads the port the kernel
 * chose, and closes. Another process may take the port before the caller binds it; that race is
 * accepted because the kernel hands out ephemeral ports round-robin, so an immediate reuse is
 * unlikely, and a server that cannot bind fails loudly at start.
 */
export async function freePort(host: string = LOOPBACK): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port: 0, exclusive: true }, resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") {
    throw new Error(`Expected a TCP address from a server listening on ${host}, got ${String(address)}.`);
  }
  return address.port;
}

/**
 * Resolves to `true` if a TCP connection to `host:port` is accepted within `timeoutMs`
 * (default 1 000 ms), else `false`. It never throws; use it to probe whether something listens.
 */
export function canConnect(port: number, host: string = LOOPBACK, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
