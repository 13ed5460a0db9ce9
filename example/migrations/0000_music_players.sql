CREATE TABLE "music_players" (
	"id" uuid PRIMARY KEY NOT NULL,
	"desired_song" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
