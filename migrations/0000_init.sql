CREATE SCHEMA IF NOT EXISTS "dmm";
--> statement-breakpoint
CREATE TABLE "dmm"."dmm_matter" (
	"namespace" text NOT NULL,
	"kind" text NOT NULL,
	"identity" text NOT NULL,
	"cache" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"generation" bigint DEFAULT 1 NOT NULL,
	"observed_generation" bigint DEFAULT 0 NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"parked" boolean DEFAULT false NOT NULL,
	"due_at" timestamp with time zone,
	"due_reason" text,
	"lease_owner" text,
	"lease_epoch" bigint DEFAULT 0 NOT NULL,
	"lease_until" timestamp with time zone,
	"dispatched_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "dmm_matter_pkey" PRIMARY KEY("namespace","kind","identity")
);
--> statement-breakpoint
CREATE TABLE "dmm"."dmm_outbox" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "dmm"."dmm_outbox_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"namespace" text NOT NULL,
	"kind" text NOT NULL,
	"identity" text NOT NULL,
	"available_at" timestamp with time zone DEFAULT now() NOT NULL,
	"tries" integer DEFAULT 0 NOT NULL,
	"bumps" integer DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "dmm"."dmm_worker" (
	"id" text PRIMARY KEY NOT NULL,
	"namespace" text NOT NULL,
	"lock_key" integer NOT NULL,
	"host" text NOT NULL,
	"pid" integer NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE INDEX "dmm_matter_due_idx" ON "dmm"."dmm_matter" USING btree ("namespace","due_at") WHERE "dmm"."dmm_matter"."due_at" is not null;--> statement-breakpoint
CREATE UNIQUE INDEX "dmm_outbox_key_idx" ON "dmm"."dmm_outbox" USING btree ("namespace","kind","identity");--> statement-breakpoint
CREATE INDEX "dmm_outbox_take_idx" ON "dmm"."dmm_outbox" USING btree ("namespace","available_at","id");