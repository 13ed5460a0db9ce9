/**
 * A loopback TCP proxy that injects network faults between a client (dmm, a test) and a server
 * (Postgres, NATS): partitions, refused connections and resets, switchable at run time.
 *
 * Faults are injected per proxy, so a scenario can partition a worker from NATS while its
 * Postgres link stays healthy, without root, iptables or touching the servers themselves.
 */
import net from "node:net";
import { LOOPBACK } from "./ports.js";

/**
 * What the proxy does with traffic.
 *
 * - `"forward"`: normal operation.
 * - `"blackhole"`: a network partition. Every open connection stays open but no byte moves in
 *   either direction and no close is passed on; new connections are accepted (the kernel
 *   completes the handshake) but not connected to the target. Clients see hangs, never errors,
 *   until their own timeouts fire.
 * - `"reject"`: the port is closed. New connections are reset as soon as they are accepted;
 *   connections that already exist keep forwarding (call {@link Proxy.dropAll} as well to
 *   emulate a crashed server).
 *
 * Leaving `"blackhole"` heals the partition: bytes sent meanwhile were held (by the proxy's
 * paused sockets and the kernel's buffers, never discarded) and are delivered, and connections
 * accepted meanwhile get their target connection, as TCP retransmission would do after a short
 * partition. To emulate a partition long enough for the peers to give up, call
 * {@link Proxy.dropAll} before switching back.
 */
export type ProxyMode = "forward" | "blackhole" | "reject";

/** Options of {@link startProxy}. */
export interface ProxyOptions {
  /** Host to forward to. Defaults to 127.0.0.1. */
  targetHost?: string;
  /** Port to forward to. Required. */
  targetPort: number;
  /**
   * Port to listen on (on 127.0.0.1 only). Defaults to a port the kernel chooses; pass the old
   * port to recreate a proxy at the same address.
   */
  listenPort?: number;
  /** Mode at start. Defaults to `"forward"`. */
  mode?: ProxyMode;
}

/** Counters since the proxy started, for assertions such as "the client reconnected". */
export interface ProxyStats {
  /** Connections the listener accepted, including rejected ones. */
  accepted: number;
  /** Connections reset on accept because the mode was `"reject"`. */
  rejected: number;
  /** Connections reset by {@link Proxy.dropAll}. */
  dropped: number;
  /** Connections currently open (forwarding or held). */
  active: number;
  /** Open connections that have no target connection yet (accepted during a blackhole). */
  held: number;
  /** Bytes passed from clients to the target. */
  bytesToTarget: number;
  /** Bytes passed from the target to clients. */
  bytesFromTarget: number;
}

/** A running proxy; see {@link startProxy}. */
export interface Proxy {
  /** The port the proxy listens on, on 127.0.0.1. */
  readonly port: number;
  /** The current mode. */
  readonly mode: ProxyMode;
  /** A snapshot of the counters. */
  readonly stats: ProxyStats;
  /** Switches the mode; takes effect at once for every connection. See {@link ProxyMode}. */
  setMode(mode: ProxyMode): void;
  /**
   * Resets every open connection on both sides (RST where the socket is connected), like a
   * restarted middlebox or a peer that crashed. Returns how many connections were dropped. The
   * mode is unchanged, so in `"forward"` clients can reconnect at once.
   */
  dropAll(): number;
  /** Stops listening and resets every open connection. Idempotent. */
  close(): Promise<void>;
}

/**
 * Starts a TCP proxy on 127.0.0.1 in front of `targetHost:targetPort` and resolves once it
 * listens. Throws the listen error (e.g. `EADDRINUSE` for a taken `listenPort`).
 */
export async function startProxy(options: ProxyOptions): Promise<Proxy> {
  const proxy = new FaultProxy(options.targetHost ?? LOOPBACK, options.targetPort, options.mode ?? "forward");
  await proxy.listen(options.listenPort ?? 0);
  return proxy;
}

/** Resets `socket`, falling back to a plain destroy where a reset is impossible (not yet connected). */
function reset(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.connecting) {
    socket.destroy();
    return;
  }
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

class FaultProxy implements Proxy {
  private readonly server: net.Server;
  private readonly links = new Set<Link>();
  private counters = { accepted: 0, rejected: 0, dropped: 0, bytesToTarget: 0, bytesFromTarget: 0 };
  private closing: Promise<void> | undefined;

  constructor(
    readonly targetHost: string,
    readonly targetPort: number,
    private currentMode: ProxyMode,
  ) {
    // allowHalfOpen: a client's FIN is passed on as a FIN, not turned into a full close.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
  }

  /** The listening port; kept after `close()` so that tests can check it is closed. */
  port = 0;

  get mode(): ProxyMode {
    return this.currentMode;
  }

  get stats(): ProxyStats {
    let held = 0;
    for (const link of this.links) if (link.upstream === undefined) held++;
    return { ...this.counters, active: this.links.size, held };
  }

  async listen(port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen({ host: LOOPBACK, port, exclusive: true }, () => {
        this.server.off("error", reject);
        const address = this.server.address();
        if (address !== null && typeof address !== "string") this.port = address.port;
        resolve();
      });
    });
  }

  setMode(mode: ProxyMode): void {
    this.currentMode = mode;
    for (const link of [...this.links]) {
      if (link.upstream === undefined) {
        // A held connection: healed, it connects now; refused, its connect attempt fails.
        if (mode === "forward") link.connectUpstream();
        else if (mode === "reject") link.reset();
      } else {
        link.updateFlow();
      }
    }
  }

  dropAll(): number {
    const count = this.links.size;
    for (const link of [...this.links]) link.reset();
    this.counters.dropped += count;
    return count;
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const link of [...this.links]) link.reset();
    });
    return this.closing;
  }

  private accept(client: net.Socket): void {
    this.counters.accepted++;
    if (this.closing !== undefined || this.currentMode === "reject") {
      if (this.closing === undefined) this.counters.rejected++;
      reset(client);
      return;
    }
    const link = new Link(this, client);
    this.links.add(link);
    if (this.currentMode === "forward") link.connectUpstream();
  }

  /** @internal Called by a link once both of its sockets are closed. */
  forget(link: Link): void {
    this.links.delete(link);
  }

  /** @internal Counts forwarded bytes. */
  count(direction: "bytesToTarget" | "bytesFromTarget", bytes: number): void {
    this.counters[direction] += bytes;
  }
}

/**
 * One proxied connection: the accepted client socket and, once connected, the socket to the
 * target. Both sockets are paused unless the proxy forwards and the receiving side has room,
 * so a blackhole holds bytes instead of dropping them and a slow reader slows the writer.
 */
class Link {
  /** The connection to the target; `undefined` while held (accepted during a blackhole). */
  upstream: net.Socket | undefined;
  /** The target socket is connected (the handshake finished). */
  private upstreamReady = false;
  /** `client` is paused because `upstream`'s write buffer is full, until it drains. */
  private clientBlocked = false;
  /** `upstream` is paused because `client`'s write buffer is full, until it drains. */
  private upstreamBlocked = false;
  private finished = false;

  constructor(
    private readonly proxy: FaultProxy,
    private readonly client: net.Socket,
  ) {
    client.on("error", () => this.reset());
    client.on("close", () => this.onClose());
    client.on("end", () => this.upstream?.end());
    client.on("data", (chunk: Buffer) => {
      this.proxy.count("bytesToTarget", chunk.length);
      if (this.upstream?.write(chunk) === false) {
        this.clientBlocked = true;
        this.updateFlow();
      }
    });
    // Attaching a "data" listener may switch a stream to flowing; the client stays paused until
    // its target connection is ready (pauseOnConnect already keeps the kernel from reading).
    client.pause();
  }

  connectUpstream(): void {
    if (this.upstream !== undefined || this.finished) return;
    const upstream = net.connect({ host: this.proxy.targetHost, port: this.proxy.targetPort, allowHalfOpen: true });
    this.upstream = upstream;
    upstream.pause();
    upstream.on("connect", () => {
      this.upstreamReady = true;
      this.updateFlow();
    });
    // The target is down or reset us: pass the failure on as a reset, like a dead server would.
    upstream.on("error", () => this.reset());
    upstream.on("close", () => this.onClose());
    upstream.on("end", () => this.client.end());
    upstream.on("drain", () => {
      this.clientBlocked = false;
      this.updateFlow();
    });
    this.client.on("drain", () => {
      this.upstreamBlocked = false;
      this.updateFlow();
    });
    upstream.on("data", (chunk: Buffer) => {
      this.proxy.count("bytesFromTarget", chunk.length);
      if (!this.client.write(chunk)) {
        this.upstreamBlocked = true;
        this.updateFlow();
      }
    });
  }

  /** Pauses or resumes both directions according to the proxy mode and backpressure. */
  updateFlow(): void {
    if (this.finished || this.upstream === undefined) return;
    const open = this.proxy.mode !== "blackhole" && this.upstreamReady;
    if (open && !this.clientBlocked) this.client.resume();
    else this.client.pause();
    if (open && !this.upstreamBlocked) this.upstream.resume();
    else this.upstream.pause();
  }

  reset(): void {
    if (this.finished) return;
    this.finished = true;
    reset(this.client);
    if (this.upstream) reset(this.upstream);
    this.proxy.forget(this);
  }

  private onClose(): void {
    // One side is fully closed; the other has nothing left to exchange with it.
    if (this.client.destroyed && (this.upstream === undefined || this.upstream.destroyed)) {
      this.finished = true;
      this.proxy.forget(this);
      return;
    }
    if (this.client.destroyed) this.upstream?.destroy();
    else this.client.destroy();
  }
}
