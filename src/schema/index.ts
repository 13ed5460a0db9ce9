/**
 * `dmm/schema`: dmm's Drizzle tables for typed queries in apps (joins with their own tables,
 * dashboards). Import them where you query; do not re-export them from the files your
 * drizzle.config.ts reads, or your migrations would try to create them too.
 */
export { dmmSchema, dmmMatter, dmmOutbox, dmmWorker } from "./tables.js";
