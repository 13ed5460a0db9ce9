/**
 * The example app's own tables, in its own Drizzle schema and migrations (example/migrations,
 * recorded in drizzle.example_migrations). dmm's tables are not re-exported here: the app
 * imports them from "dmm/schema" where it queries them, so drizzle-kit never sees them.
 */
import { pgTable, text, timestamp, uuid } from "drizzle-orm/pg-core";

/** One row per music player: the song the app wants it to play. The truth dmm converges to. */
export const musicPlayers = pgTable("music_players", {
  /** A UUID v7 made by the app (time-ordered, so new players sort last). */
  id: uuid("id").primaryKey(),
  /** The song the player should be playing. */
  desiredSong: text("desired_song").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});
