DROP INDEX "dmm"."dmm_outbox_take_idx";--> statement-breakpoint
ALTER TABLE "dmm"."dmm_outbox" ADD COLUMN "relay_until" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "dmm_outbox_take_idx" ON "dmm"."dmm_outbox" USING btree ("namespace","kind","available_at","id");