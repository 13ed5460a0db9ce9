/**
 * A small seeded pseudo-random generator, so that a chaos run's schedule (which fault, which
 * worker, which identities) can be replayed from the seed it prints. Timing still varies from
 * run to run; the choices do not.
 */

/** A seeded source of random choices; see {@link createRandom}. */
export interface Random {
  /** The seed this generator started from. */
  readonly seed: number;
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [min, max], both inclusive. */
  int(min: number, max: number): number;
  /** A float in [min, max). */
  between(min: number, max: number): number;
  /** True with probability `p`. */
  chance(p: number): boolean;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
  /** One key of `weights`, chosen with probability proportional to its (non-negative) weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K;
  /** `count` distinct elements of `items` (all of them if it has fewer). */
  sample<T>(items: readonly T[], count: number): T[];
}

/**
 * Returns a generator seeded with `seed` (a 32-bit integer; other numbers are truncated).
 * Mulberry32: tiny, fast and good enough for choosing faults; not for cryptography.
 */
export function createRandom(seed: number): Random {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const random: Random = {
    seed: seed >>> 0,
    next,
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    between: (min, max) => min + next() * (max - min),
    chance: (p) => next() < p,
    pick: (items) => {
      if (items.length === 0) throw new RangeError("pick() needs a non-empty array.");
      return items[Math.floor(next() * items.length)]!;
    },
    weighted: (weights) => {
      const entries = Object.entries(weights) as [keyof typeof weights & string, number][];
      const total = entries.reduce((sum, [, w]) => sum + Math.max(0, w), 0);
      if (total <= 0) throw new RangeError("weighted() needs at least one positive weight.");
      let r = next() * total;
      for (const [key, w] of entries) {
        r -= Math.max(0, w);
        if (r < 0) return key;
      }
      return entries[entries.length - 1]![0];
    },
    sample: (items, count) => {
      const copy = [...items];
      for (let i = copy.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [copy[i], copy[j]] = [copy[j]!, copy[i]!];
      }
      return copy.slice(0, Math.max(0, count));
    },
  };
  return random;
}
