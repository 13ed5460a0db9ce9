/**
 * The two ways a runner gets work, behind one `Source` interface:
 * - tokens from a JetStream pull consumer, claimed in batches (`createTokenSource`);
 * - outbox rows taken and claimed in one statement, woken by LISTEN (`createOutboxSource`).
 */
import { coerceError } from "../errors.js";
import type { Logger } from "../types.js";
import type { ClaimStatus, ClaimedMatter } from "../store/claim.js";
import type { Token } from "../nats/tokens.js";
import type { Claimed, Source } from "./engine.js";
import { sleep, Wakeup } from "../async.js";

/** How long a re-tried token waits when its matter row was locked by a committing notify. */
const BUSY_RETRY_MS = 25;

/** How long an offer (SwitchingSource.offer) waits for the runner's take before it lapses. */
export const OFFER_TTL_MS = 50;

/** A source that can be woken from outside (LISTEN, a timer). */
export interface WakeableSource extends Source {
  wake(): void;
  /** Claims these keys on the next take, without waiting for their tokens (dead-worker recovery). */
  inject(keys: { kind: string; identity: string }[]): void;
}

const NO_TOKEN: Omit<Token, "kind" | "identity"> = { ack() {}, nak() {}, working() {} };

/** Injected I/O of a token source. */
export interface TokenSourceDeps {
  kind: string;
  log: Logger;
  /** How long one pull request waits for tokens. */
  expiresMs: number;
  /** Pulls up to `max` messages; yields each message's tokens (a batch token has many). */
  fetch(max: number, expiresMs: number, signal: AbortSignal): AsyncIterable<Token[]>;
  /** Claims the keys; one with an `origin` defers to a newer outbox row of its identity (see claimKeys). */
  claim(keys: { kind: string; identity: string; origin: { row: number; bumps: number } | null }[]): Promise<ClaimStatus[]>;
}

/**
 * Pulls tokens ahead of demand (up to the free slots), and claims whatever has arrived in one
 * statement per `take`. Tokens whose matter needs no run are acked away; tokens whose matter
 * is locked or not yet due are nak'ed back with a delay, except the identities of a batch
 * token: those wait here for their retry (the batch message stays unacked meanwhile), because
 * a nak would bring back the whole batch.
 */
export function createTokenSource(deps: TokenSourceDeps): WakeableSource & { restartPulls(): void } {
  const queue: Token[] = [];
  const retrying = new Map<NodeJS.Timeout, Token>();
  const stopper = new AbortController();
  // Messages asked for and not yet received, and the number of tokens a message holds (batch
  // tokens carry many), so that a pull asks for about as many tokens as there is room for. The
  // estimate follows a bigger message at once and smaller ones over a few messages. A pull for
  // many messages can still bring in many batches (when a backlog starts): those that arrive
  // with twice the room already queued go back at once (nak), whole, for other workers, so a
  // worker never hoards what it cannot run soon.
  let outstanding = 0;
  let perMessage = 1;
  let room = 0;
  let failures = 0;
  let waiter: (() => void) | null = null;
  const wake = () => {
    const w = waiter;
    waiter = null;
    w?.();
  };
  // Pulls in flight; a reconnect stops them all at once (the server forgot them), so their
  // slots are requested again on the new connection instead of after their expiry.
  let pulls = new AbortController();
  const request = (n: number) => {
    outstanding += n;
    // A pull that outlives its expiry (lost in a reconnect, a stalled server) is stopped, so
    // its slots are requested again instead of being waited for forever.
    const giveUp = AbortSignal.any([stopper.signal, pulls.signal, AbortSignal.timeout(deps.expiresMs + 2_000)]);
    void (async () => {
      let received = 0;
      try {
        for await (const tokens of deps.fetch(n, deps.expiresMs, giveUp)) {
          received++;
          outstanding--;
          perMessage = Math.max(tokens.length, perMessage + (tokens.length - perMessage) / 8);
          const hoarding = tokens.length > 1 && queue.length + retrying.size >= 2 * room;
          if (stopper.signal.aborted || hoarding) for (const t of tokens) t.nak(0);
          else queue.push(...tokens);
          wake();
        }
        failures = 0;
      } catch (err) {
        failures++;
        if (failures === 1 || failures % 50 === 0) deps.log.warn("tokens:fetch:error", { kind: deps.kind, err: coerceError(err).message });
        await sleep(Math.min(2_000, 50 * 2 ** Math.min(failures, 6)));
      } finally {
        outstanding -= n - received;
        wake();
      }
    })();
  };
  // Asks for as many messages as the free room holds, rounded up (so that any room asks for one;
  // a batch may overfill it), unless enough are asked for already.
  const topUp = () => {
    const free = room - queue.length - retrying.size;
    const deficit = free > 0 ? Math.ceil(free / perMessage) - outstanding : 0;
    if (deficit > 0 && (outstanding === 0 || deficit >= Math.max(1, Math.floor(room / perMessage / 4)))) request(deficit);
  };
  const retryLater = (token: Token, ms: number) => {
    if (!token.batched || stopper.signal.aborted) {
      token.nak(ms);
      return;
    }
    token.working();
    const timer = setTimeout(() => {
      retrying.delete(timer);
      queue.push(token);
      wake();
    }, ms);
    retrying.set(timer, token);
  };
  return {
    wake,
    restartPulls() {
      pulls.abort();
      pulls = new AbortController();
      wake();
    },
    inject(keys) {
      for (const k of keys) queue.unshift({ ...NO_TOKEN, kind: k.kind, identity: k.identity });
      wake();
    },
    async take(max) {
      if (stopper.signal.aborted) return [];
      room = max;
      topUp();
      if (queue.length === 0) return [];
      const batch = queue.splice(0, max);
      let statuses: ClaimStatus[];
      try {
        statuses = await deps.claim(batch.map((t) => ({ kind: t.kind, identity: t.identity, origin: t.origin ?? null })));
      } catch (err) {
        for (const t of batch) retryLater(t, BUSY_RETRY_MS);
        throw err;
      }
      const claimed: Claimed[] = [];
      statuses.forEach((s, i) => {
        const token = batch[i]!;
        switch (s.status) {
          case "claimed":
            claimed.push({ matter: s.matter, token });
            break;
          case "busy":
            retryLater(token, BUSY_RETRY_MS);
            break;
          case "early":
            retryLater(token, s.dueInMs);
            break;
          default:
            token.ack();
        }
      });
      return claimed;
    },
    ready(signal) {
      if (queue.length > 0 || signal.aborted) return Promise.resolve();
      // The last take may have found its room full of queued tokens and asked for nothing, and
      // then seen them all turn out idle: without a pull out, a token published now would wait
      // for this wait's end (expiresMs; traced after a burst of notifies: final runs 4-5 s late).
      if (!stopper.signal.aborted) topUp();
      return new Promise<void>((resolve) => {
        // Re-check now and then even without news: a belt to the pulls' braces. An aborted
        // wait (the runner stops, or a switching source's wait ended another way) ends at once
        // and leaves no timer behind.
        const t = setTimeout(() => done(), deps.expiresMs);
        const done = () => {
          clearTimeout(t);
          signal.removeEventListener("abort", done);
          if (waiter === done) waiter = null;
          resolve();
        };
        signal.addEventListener("abort", done, { once: true });
        waiter = done;
      });
    },
    async close() {
      stopper.abort();
      for (const [timer, token] of retrying) {
        clearTimeout(timer);
        token.nak(0);
      }
      retrying.clear();
      for (const t of queue.splice(0)) t.nak(0);
      wake();
    },
  };
}

/** Injected I/O of an outbox source. */
export interface OutboxSourceDeps {
  pollIntervalMs: number;
  /** Claims up to `max`; `nextInMs`: when the next outbox row of the kind becomes available (null: none). */
  takeAndClaim(max: number): Promise<{ claimed: ClaimedMatter[]; taken: number; nextInMs: number | null }>;
}

/**
 * Takes work straight from the outbox. After a full batch it takes again at once; otherwise it
 * is `drained` and waits for a LISTEN wake-up, the next deferred row's time (which the take
 * reported) or the backstop poll.
 */
export function createOutboxSource(deps: OutboxSourceDeps): WakeableSource {
  let more = true;
  let next: number | null = null;
  const wakeup = new Wakeup();
  return {
    wake: () => wakeup.wake(),
    // The outbox rows the dead-worker sweep wrote already lead here.
    inject: () => wakeup.wake(),
    get drained() {
      return !more;
    },
    async take(max) {
      wakeup.reset();
      const r = await deps.takeAndClaim(max);
      more = r.taken >= max;
      next = r.nextInMs;
      return r.claimed.map((matter) => ({ matter }));
    },
    async ready(signal) {
      if (more || wakeup.pending || signal.aborted) return;
      const wait = next === null ? deps.pollIntervalMs : Math.min(deps.pollIntervalMs, Math.max(1, next));
      await wakeup.wait(wait, signal);
    },
    async close() {
      wakeup.wake();
    },
  };
}

/** A source that can also take outbox rows announced to it (NATS dispatch, see `offer`). */
export interface SwitchingSource extends WakeableSource {
  /** The kind its runner works. */
  readonly kind: string;
  modeChanged(): void;
  restartPulls(): void;
  /**
   * `count` new outbox rows of this kind were just committed (a small notify announces them on
   * `dmm_outbox_rows`, migration 0018). A runner waiting for tokens (its last take found none;
   * it may have runs in flight) takes up to `count` available outbox rows of its kind itself on
   * its next take
   * (`dmm.take_and_claim`, as Postgres-only dispatch does) instead of waiting for their tokens:
   * from commit to run that skips the publish to NATS and the delivery back, two of the five
   * process hops. Returns false when the runner is not waiting (the rows go the token way, as
   * before). `done` is called once that take settled, or when it will not happen: closing, or
   * no take within OFFER_TTL_MS (the runner found its room full after all, e.g. its prefetch
   * depth fell while it waited); the rows are then the relay's.
   */
  offer(count: number, done: () => void): boolean;
}

/**
 * Dispatch that follows the bucket's NATS health: tokens while JetStream is reachable, the
 * Postgres outbox while it is not (`usePostgres()` true). Both claim through the same fenced
 * statements, so switching mid-flight is safe; tokens left in the stream are claimed (or acked
 * as idle) once NATS is back. A waiting runner also takes announced rows from the outbox
 * directly (`offer`); a token another worker published early for such a row finds its matter
 * leased or done and is acked as idle, and a row a relay round took first (in flight) is not
 * taken: its token dispatches it as before.
 */
export function createSwitchingSource(
  kind: string,
  tokens: WakeableSource & { restartPulls(): void },
  outbox: WakeableSource,
  usePostgres: () => boolean,
): SwitchingSource {
  let changed: (() => void) | null = null;
  // While the runner waits in ready(): accepting an offer resolves that wait.
  let waiting: (() => void) | null = null;
  // The offer accepted and not yet taken; `done` is called exactly once, by whichever of the
  // take, the expiry and close comes first.
  type Offer = { count: number; done: (() => void) | null; expiry: NodeJS.Timeout };
  let offered: Offer | null = null;
  const settle = (o: Offer) => {
    if (offered === o) offered = null;
    clearTimeout(o.expiry);
    const done = o.done;
    o.done = null;
    done?.();
  };
  const current = () => (usePostgres() ? outbox : tokens);
  return {
    kind,
    wake() {
      tokens.wake();
      outbox.wake();
    },
    inject(keys) {
      current().inject(keys);
    },
    get drained() {
      return current().drained === true;
    },
    async take(max) {
      const o = offered;
      if (!o) return current().take(max);
      offered = null;
      clearTimeout(o.expiry);
      try {
        return await outbox.take(Math.min(max, o.count));
      } finally {
        settle(o);
      }
    },
    ready(signal) {
      if (offered) return Promise.resolve();
      const modeSwitch = new Promise<void>((resolve) => (changed = resolve));
      const offer = new Promise<void>((resolve) => (waiting = resolve));
      // The inner wait is ended with the race, so its timer does not outlive it.
      const ended = new AbortController();
      return Promise.race([current().ready(AbortSignal.any([signal, ended.signal])), modeSwitch, offer]).finally(() => {
        ended.abort();
        changed = null;
        waiting = null;
      });
    },
    offer(count, done) {
      const w = waiting;
      if (!w || offered || usePostgres() || count <= 0) return false;
      waiting = null;
      const o: Offer = { count, done, expiry: setTimeout(() => settle(o), OFFER_TTL_MS) };
      offered = o;
      w();
      return true;
    },
    restartPulls() {
      tokens.restartPulls();
    },
    modeChanged() {
      const c = changed;
      changed = null;
      c?.();
      tokens.wake();
      outbox.wake();
    },
    async close() {
      if (offered) settle(offered);
      await Promise.all([tokens.close(), outbox.close()]);
    },
  };
}
