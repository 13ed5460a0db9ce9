/**
 * Security: SQL injection through every string a user can hand dmm, NATS authentication and TLS
 * options passed through to the client, Postgres TLS through the URL, and a worker running as a
 * least-privileged role (the grants docs/SECURITY.md lists). Special server configurations run on
 * private servers started here; the machine's shared ones are never reconfigured.
 */
import { afterAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import postgres from "postgres";
import { sql as dsql } from "drizzle-orm";
import { connect, nkeyAuthenticator, nkeys } from "@nats-io/transport-node";
import { startNatsServer, startPostgresServer, type NatsServer } from "../../chaos/lib/index.js";
import { migrate, open, type Bucket, type BucketInternals } from "../../src/bucket.js";
import { ConnectionError, InvalidNameError, RetryAfterError, TerminalError, UnknownKindError } from "../../src/errors.js";
import type { Context, Logger } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { TEST_DB_PREFIX, urlFor } from "../harness/env.js";
import { quiesce } from "../harness/quiesce.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";
import { expectedMigrations } from "../../src/store/migrate.js";

/** The dmm migrations this version ships, and the last one. */
const DMM_MIGRATIONS = expectedMigrations();
const LATEST_MIGRATION = DMM_MIGRATIONS[DMM_MIGRATIONS.length - 1]!.tag;

const env = useTestEnvironment();
const disposables: { dispose(): Promise<void> }[] = [];
afterAll(async () => {
  for (const d of disposables.splice(0)) await d.dispose().catch(() => {});
});

/** Heartbeats are not under test here; a long lease keeps runs from meeting one. */
const QUIET = { leaseMs: 120_000, heartbeatMs: 60_000 };

interface Line {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

function recordingLogger(lines: Line[], base: Record<string, unknown> = {}): Logger {
  const emit = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, msg, fields: { ...base, ...fields } });
  return { debug: emit("debug"), info: emit("info"), warn: emit("warn"), error: emit("error"), child: (f) => recordingLogger(lines, { ...base, ...f }) };
}

function recordRuns(bucket: unknown): RunEndEvent[] {
  const events: RunEndEvent[] = [];
  (bucket as BucketInternals).onRunEnd = (e) => events.push(e);
  return events;
}

class Unit {
  id = "";
  identity() {
    return this.id;
  }
  async materialize() {}
}

/** Notifies one matter of `bucket` and waits for its successful run. */
async function roundTrip(bucket: Bucket, id = "one"): Promise<void> {
  const stream = bucket.register("unit", Unit);
  const runs = recordRuns(bucket);
  const work = stream.work();
  await bucket.notify(Object.assign(new Unit(), { id }));
  await waitFor(`the run of ${id}`, () => runs.some((r) => r.identity === id && r.outcome === "ok"));
  await bucket.close();
  await work;
}

/** SQL (and subject, JSON, log) syntax; every one is a valid identity, cache key and value. */
const INJECTIONS = [
  "'; drop table dmm.dmm_matter; --",
  "x' or '1'='1",
  '"; drop schema dmm cascade; --',
  "$1",
  "$$; select pg_sleep(30); $$",
  "')); delete from dmm.dmm_outbox; --",
  "\\'; truncate dmm.dmm_matter; --",
  "'||(select current_user)||'",
  "E'\\x41'",
  "1; update dmm.dmm_matter set cache = '{}'",
  "/* */ select 1 --",
  "'); select pg_notify('dmm_outbox', 'x:y'); --",
  "dmm.ns.kind.>",
  "*",
  '{"__proto__":{"polluted":true}}',
  "::jsonb",
  "line\r\nforged=1",
  "🎵 ' \" ` \\ ;",
];

/** Everything in schemas dmm and public that an injection could create, drop or alter. */
async function catalog(sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<{ o: string }[]>`
    select n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || (select count(*) from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as o
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('dmm', 'public')
    union all
    select 'fn ' || n.nspname || '.' || p.proname || ' ' || md5(p.prosrc) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('dmm', 'public')
    union all
    select 'trigger ' || t.tgname || ' ' || t.tgenabled::text from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'dmm' and not t.tgisinternal
    union all
    select 'schema ' || nspname from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema'`;
  return rows.map((r) => r.o).sort();
}

describe.each(MODES)("SQL injection with %s dispatch", (mode) => {
  it("keeps the database intact and round-trips every injected identity, cache key, cache value, error message and log field exactly", async () => {
    const sql = env.sql();
    await sql`create table if not exists app_canary (v text not null)`;
    await sql`create table if not exists app_canary_log (v text not null)`;
    await sql`insert into app_canary (v) values ('still here')`;
    // A bystander namespace whose rows no injection may touch.
    const bystander = await env.open(mode, QUIET);
    bystander.register("unit", Unit);
    await bystander.notify([1, 2, 3].map((i) => Object.assign(new Unit(), { id: `b${i}` })));
    const before = { catalog: await catalog(sql), bystander: await sql`select * from dmm.dmm_matter where namespace = ${bystander.namespace} order by identity` };

    for (const table of ["dmm.dmm_matter:r:", "dmm.dmm_outbox:r:", "dmm.dmm_worker:r:", "public.app_canary:r:", "trigger 10_dmm_matter__outbox_insert O"]) {
      expect(before.catalog.some((o) => o.startsWith(table)), table).toBe(true);
    }

    const lines: Line[] = [];
    const bucket = await env.open(mode, { ...QUIET, logger: recordingLogger(lines) });
    const data = (s: string) => ({ [s]: s, nested: [s, { [s]: [s] }], n: s.length });
    class Inj {
      id = "";
      mode = "ok";
      data: Record<string, unknown> = {};
      note = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        const s = this.data.nested ? ((this.data.nested as unknown[])[0] as string) : this.note;
        ctx.log.warn(s, { [s]: s, value: s });
        if (this.mode === "fail") throw new Error(s);
        if (this.mode === "park") throw new TerminalError(s);
        if (this.mode === "later") throw new RetryAfterError(s, 600_000);
        if (this.mode === "parent") {
          ctx.notify(Object.assign(new Inj(), { id: `child ${s}`, note: s }));
          ctx.touch("inj", s);
          await ctx.transaction(async (tx) => {
            await tx.execute(dsql`insert into app_canary_log (v) values (${s})`);
          });
        }
        this.note = `seen ${s}`;
      }
    }
    const stream = bucket.register("inj", Inj, { backoffBaseMs: 600_000, backoffMaxMs: 600_000 });
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 8 });

    // Namespaces and kinds are refused before anything is written, wherever they appear.
    for (const s of INJECTIONS) {
      await expect(open(s, { database: env.url })).rejects.toBeInstanceOf(InvalidNameError);
      expect(() => bucket.register(s, class extends Unit {})).toThrow(InvalidNameError);
      await expect(bucket.touch(s, "x")).rejects.toBeInstanceOf(UnknownKindError);
      await expect(bucket.matters({ kind: s })).rejects.toBeInstanceOf(InvalidNameError);
    }
    await expect(bucket.matters({ limit: "1; drop table dmm.dmm_matter" as unknown as number })).rejects.toThrow();

    const modes = ["ok", "fail", "park", "later", "parent"] as const;
    const items = INJECTIONS.flatMap((s) => modes.map((m) => Object.assign(new Inj(), { id: m === "ok" ? s : `${m} ${s}`, mode: m, data: data(s) })));
    await bucket.notify(items);
    for (const s of INJECTIONS) await bucket.touch(Inj, s);
    const expectedRuns = items.length + INJECTIONS.length;
    await waitFor(`${expectedRuns} runs`, () => new Set(runs.map((r) => r.identity)).size >= expectedRuns);
    await quiesce(bucket, sql);

    for (const s of INJECTIONS) {
      expect((await bucket.matter(Inj, s))?.cache, s).toStrictEqual({ id: s, mode: "ok", data: data(s), note: `seen ${s}` });
      for (const m of ["fail", "park", "later"] as const) {
        const view = (await bucket.matter(Inj, `${m} ${s}`))!;
        expect(view.cache, s).toStrictEqual({ id: `${m} ${s}`, mode: m, data: data(s), note: "" });
        expect(view.lastError, s).toContain(s);
        expect(view.state).toBe(m === "park" ? "parked" : "failing");
      }
      expect((await bucket.matter(Inj, `child ${s}`))?.cache, s).toStrictEqual({ id: `child ${s}`, mode: "ok", data: {}, note: `seen ${s}` });
      expect((await bucket.matter(Inj, `parent ${s}`))?.cache, s).toStrictEqual({ id: `parent ${s}`, mode: "parent", data: data(s), note: `seen ${s}` });
      expect(lines.some((l) => l.msg === s && l.fields[s] === s && l.fields.value === s && l.fields.key === s), s).toBe(true);
    }
    const logged = await sql<{ v: string }[]>`select v from app_canary_log`;
    expect(logged.map((r) => r.v).sort()).toEqual([...INJECTIONS].sort());
    const all = await bucket.matters();
    expect(all.map((m) => m.identity).sort()).toEqual([...items.map((i) => i.id), ...INJECTIONS.map((s) => `child ${s}`)].sort());

    expect(await catalog(sql)).toEqual(before.catalog);
    expect(await sql`select * from dmm.dmm_matter where namespace = ${bystander.namespace} order by identity`).toEqual(before.bystander);
    expect(await sql`select v from app_canary`).toEqual([{ v: "still here" }]);
    // The whole line on failure: which error it was says whether the input or the load caused it.
    expect(lines.filter((l) => /error$/.test(l.msg) && !l.msg.startsWith("materialize")).map((l) => `${l.msg} ${JSON.stringify(l.fields)}`)).toEqual([]);

    await bucket.close();
    await bystander.close();
    await work;
    await sql`drop table app_canary, app_canary_log`;
    await sql.close();
  });
});

/** A CA, a server certificate for 127.0.0.1 and a client certificate, in a fresh directory. */
function makeCertificates(): { dir: string; file: (name: string) => string } {
  const dir = mkdtempSync(path.join(tmpdir(), "dmm-tls-"));
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (const ca of ["ca", "other-ca"]) {
    openssl("req", "-x509", ...ec, "-days", "2", "-subj", `/CN=dmm test ${ca}`, "-keyout", file(`${ca}.key`), "-out", file(`${ca}.pem`));
  }
  writeFileSync(file("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  writeFileSync(file("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  for (const who of ["server", "client"]) {
    openssl("req", ...ec, "-subj", `/CN=dmm-${who}`, "-keyout", file(`${who}.key`), "-out", file(`${who}.csr`));
    openssl("x509", "-req", "-in", file(`${who}.csr`), "-CA", file("ca.pem"), "-CAkey", file("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", file(`${who}.ext`), "-out", file(`${who}.pem`));
  }
  disposables.push({ dispose: async () => rmSync(dir, { recursive: true, force: true }) });
  return { dir, file };
}

async function natsServer(options: Parameters<typeof startNatsServer>[0]): Promise<NatsServer> {
  const server = await startNatsServer(options);
  disposables.push(server);
  return server;
}

describe("NATS authentication and TLS", () => {
  it("opens a bucket on a NATS server that requires a token when given { servers, token }, and materializes through it", async () => {
    const nats = await natsServer({ token: "t0ken-s3cret" });
    const bucket = await env.open("nats", { ...QUIET, nats: { servers: nats.url, token: "t0ken-s3cret" } });
    expect(bucket.dispatch).toBe("nats");
    await roundTrip(bucket);
    await nats.dispose();
  });

  it("refuses to open without the token, or with a wrong one, with a ConnectionError that names the server and the refusal", async () => {
    const nats = await natsServer({ token: "t0ken-s3cret" });
    for (const option of [nats.url, { servers: nats.url }, { servers: nats.url, token: "wrong" }]) {
      const err = await open(env.namespace(), { database: env.url, nats: option, logger: recordingLogger([]) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectionError);
      expect((err as Error).message).toContain(`127.0.0.1:${nats.port}`);
      expect((err as Error).message).toMatch(/Authorization Violation/i);
      expect((err as Error).message).not.toContain("wrong");
    }
    // Nothing was written and the Postgres pool was closed (the leak check would say otherwise).
    const sql = env.sql();
    const [row] = await sql`select count(*)::int as n from dmm.dmm_worker`;
    expect(row!.n).toBe(0);
    await sql.close();
    await nats.dispose();
  });

  it("passes user and password through to NATS, and refuses a wrong password with a ConnectionError that does not repeat it", async () => {
    const nats = await natsServer({ extraArgs: ["--user", "dmm", "--pass", "pa55-w0rd"] });
    await roundTrip(await env.open("nats", { ...QUIET, nats: { servers: nats.url, user: "dmm", pass: "pa55-w0rd" } }));
    const err = await open(env.namespace(), { database: env.url, nats: { servers: nats.url, user: "dmm", pass: "n0t-it" } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as Error).message).toMatch(/Authorization Violation/i);
    expect((err as Error).message).not.toContain("n0t-it");
    await nats.dispose();
  });

  it("passes an NKey authenticator through to NATS, and is refused with a key the server does not know", async () => {
    const { file } = makeCertificates();
    const user = nkeys.createUser();
    writeFileSync(file("nkey.conf"), `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`);
    const nats = await natsServer({ extraArgs: ["-c", file("nkey.conf")] });
    await roundTrip(await env.open("nats", { ...QUIET, nats: { servers: nats.url, authenticator: nkeyAuthenticator(user.getSeed()) } }));
    const stranger = nkeys.createUser();
    const err = await open(env.namespace(), { database: env.url, nats: { servers: nats.url, authenticator: nkeyAuthenticator(stranger.getSeed()) } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    await nats.dispose();
  });

  it("verifies a TLS server against the CA given in tls options, presents a client certificate, and refuses a server it cannot verify", async () => {
    const { file } = makeCertificates();
    const nats = await natsServer({
      extraArgs: ["--tls", "--tlscert", file("server.pem"), "--tlskey", file("server.key"), "--tlsverify", "--tlscacert", file("ca.pem")],
    });
    const tls = { caFile: file("ca.pem"), certFile: file("client.pem"), keyFile: file("client.key") };
    await roundTrip(await env.open("nats", { ...QUIET, nats: { servers: nats.url, tls } }));
    const refusals = [
      { servers: nats.url }, // no CA: the server's certificate cannot be verified
      { servers: nats.url, tls: { ...tls, caFile: file("other-ca.pem") } }, // the wrong CA
      // No client certificate: the server drops the connection after the handshake, which the
      // client only notices at its connect timeout (also an option passed through).
      { servers: nats.url, tls: { caFile: file("ca.pem") }, timeout: 2_000 },
    ];
    for (const option of refusals) {
      const err = await open(env.namespace(), { database: env.url, nats: option }).catch((e: unknown) => e);
      expect(err, JSON.stringify(option)).toBeInstanceOf(ConnectionError);
    }
    await nats.dispose();
  });

  it("works as a NATS user allowed only its bucket's subjects and JetStream API (docs/SECURITY.md), which cannot open another namespace", async () => {
    const { file } = makeCertificates();
    const ns = env.namespace();
    const stream = `dmm_${ns}`;
    const allow = [
      `dmm.${ns}.>`,
      "$JS.API.INFO",
      `$JS.API.STREAM.INFO.${stream}`,
      `$JS.API.STREAM.CREATE.${stream}`,
      `$JS.API.STREAM.UPDATE.${stream}`,
      `$JS.API.CONSUMER.INFO.${stream}.*`,
      `$JS.API.CONSUMER.CREATE.${stream}.>`,
      `$JS.API.CONSUMER.DURABLE.CREATE.${stream}.*`,
      `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`,
      `$JS.ACK.${stream}.>`,
    ];
    writeFileSync(
      file("perm.conf"),
      `authorization { users = [ { user: dmm, password: "pa55-w0rd", permissions: {
         publish: { allow: ${JSON.stringify(allow)} }, subscribe: { allow: ["_INBOX.>"] } } } ] }\n`,
    );
    const nats = await natsServer({ extraArgs: ["-c", file("perm.conf")] });
    const creds = { servers: nats.url, user: "dmm", pass: "pa55-w0rd" };
    const lines: Line[] = [];
    const bucket = await env.open("nats", { ...QUIET, nats: creds, logger: recordingLogger(lines) }, ns);
    const units = bucket.register("unit", Unit);
    const runs = recordRuns(bucket);
    const work = units.work();
    await bucket.notify([1, 2, 3].map((i) => Object.assign(new Unit(), { id: `p${i}` })));
    await waitFor("three runs", () => runs.filter((r) => r.outcome === "ok").length >= 3);
    await bucket.touch(Unit, "p1");
    await waitFor("the touched run", () => runs.filter((r) => r.outcome === "ok").length >= 4);
    expect(bucket.natsFallback).toBe(false);
    expect(lines.filter((l) => l.level === "warn" || l.level === "error")).toEqual([]);
    await bucket.close();
    await work;
    await expect(open(env.namespace(), { database: env.url, nats: creds, logger: recordingLogger([]) })).rejects.toThrow(/Permissions Violation/);
    await nats.dispose();
  });

  it("adopts an authenticated NatsConnection the app opened, and leaves it open on close", async () => {
    const nats = await natsServer({ token: "t0ken-s3cret" });
    const nc = await connect({ servers: nats.url, token: "t0ken-s3cret" });
    await roundTrip(await env.open("nats", { ...QUIET, nats: nc }));
    expect(nc.isClosed()).toBe(false);
    await nc.close();
    await nats.dispose();
  });
});

describe("Postgres TLS", () => {
  it("connects over TLS when the URL says sslmode=require: the pool and the worker's session connection are encrypted; verify-full checks the certificate", async () => {
    const { file } = makeCertificates();
    if (process.getuid?.() === 0) {
      // The private Postgres runs as the postgres OS user, which must own its key (mode 0600).
      const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"]).toString());
      for (const name of ["server.pem", "server.key"]) chownSync(file(name), id("-u"), id("-g"));
      chmodSync(path.dirname(file("ca.pem")), 0o755);
    }
    chmodSync(file("server.key"), 0o600);
    const pg = await startPostgresServer({ settings: { ssl: "on", ssl_cert_file: file("server.pem"), ssl_key_file: file("server.key") } });
    disposables.push(pg);
    const url = new URL(pg.url);
    url.searchParams.set("sslmode", "require");
    const bucket = await open(env.namespace(), { database: url.toString(), migrate: true, logger: recordingLogger([]), ...QUIET });
    const stream = bucket.register("unit", Unit);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Unit(), { id: "over tls" }));
    await waitFor("the run", () => runs.length >= 1);
    const observer = postgres(pg.url, { max: 1, onnotice: () => {} });
    const conns = await observer<{ application_name: string; ssl: boolean }[]>`
      select a.application_name, s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) where a.application_name like 'dmm:%'`;
    expect(conns.map((c) => c.application_name)).toEqual(expect.arrayContaining([`dmm:${bucket.namespace}`, "dmm:session"]));
    expect(conns.every((c) => c.ssl)).toBe(true);
    await bucket.close();
    await work;
    // verify-full checks the chain against the system CAs, which do not know this test CA.
    url.searchParams.set("sslmode", "verify-full");
    await expect(open(env.namespace(), { database: url.toString(), logger: recordingLogger([]) })).rejects.toThrow(/certificate/);
    // An app that verifies against its own CA passes a postgres.js client configured for it.
    const verified = postgres(pg.url, { ssl: { ca: readFileSync(file("ca.pem")), rejectUnauthorized: true }, max: 4, onnotice: () => {} });
    await roundTrip(await open(env.namespace(), { database: verified, logger: recordingLogger([]), ...QUIET }), "verified");
    const [tls] = await verified<{ ssl: boolean }[]>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`;
    expect(tls!.ssl).toBe(true);
    await verified.end();
    const wrongCa = postgres(pg.url, { ssl: { ca: readFileSync(file("other-ca.pem")), rejectUnauthorized: true }, max: 1, onnotice: () => {} });
    await expect(open(env.namespace(), { database: wrongCa, logger: recordingLogger([]) })).rejects.toThrow(/certificate/);
    await wrongCa.end();
    await observer.end();
    await pg.dispose();
  });
});

/** The runtime grants of docs/SECURITY.md, as the migration role runs them (for itself: FOR ROLE is implied). */
function runtimeGrants(database: string, runtime: string): string {
  return `
    grant usage on schema dmm to "${runtime}";
    grant select, insert, update, delete on dmm.dmm_matter, dmm.dmm_outbox, dmm.dmm_worker to "${runtime}";
    grant select on dmm.dmm_migrations to "${runtime}";
    grant usage on sequence dmm.dmm_outbox_id_seq to "${runtime}";
    grant execute on all functions in schema dmm to "${runtime}";
    alter default privileges in schema dmm grant select, insert, update, delete on tables to "${runtime}";
    alter default privileges in schema dmm grant usage on sequences to "${runtime}";
    alter default privileges in schema dmm grant execute on functions to "${runtime}";`;
}

describe("least privilege", () => {
  it("runs notify, work and matter in both dispatch modes as a role holding only the runtime grants, which cannot drop, alter or create anything", async () => {
    const suffix = randomBytes(4).toString("hex");
    const database = `${TEST_DB_PREFIX}lp${suffix}`;
    const migrator = `dmm_migrator_${suffix}`;
    const runtime = `dmm_runtime_${suffix}`;
    const password = randomBytes(12).toString("hex");
    const as = (role: string) => {
      const u = new URL(urlFor(database));
      u.username = role;
      u.password = password;
      return u.toString();
    };
    const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
    let owner: postgres.Sql | null = null;
    try {
      await admin.unsafe(`create database "${database}"`);
      await admin.unsafe(`create role "${migrator}" login password '${password}'; create role "${runtime}" login password '${password}'`);
      owner = postgres(urlFor(database), { max: 1, onnotice: () => {} });
      // What the DBA does once: nothing for anyone by default; the migrator may create schema dmm.
      await owner.unsafe(`
        revoke all on database "${database}" from public;
        revoke all on schema public from public;
        grant connect, create on database "${database}" to "${migrator}";
        grant connect on database "${database}" to "${runtime}";
        create table public.app_secret (v text); insert into public.app_secret values ('secret');`);
      expect(await migrate(as(migrator))).toEqual({ applied: DMM_MIGRATIONS.length });
      const mig = postgres(as(migrator), { max: 1, onnotice: () => {} });
      await mig.unsafe(runtimeGrants(database, runtime));
      await mig.end();

      for (const mode of MODES) {
        const lines: Line[] = [];
        const bucket = await env.open(mode, { ...QUIET, database: as(runtime), deadWorkerCheckMs: 50, logger: recordingLogger(lines) });
        const stream = bucket.register("unit", Unit);
        const runs = recordRuns(bucket);
        const work = stream.work();
        await bucket.notify([1, 2, 3].map((i) => Object.assign(new Unit(), { id: `${mode} ${i}` })));
        await waitFor(`three runs with ${mode} dispatch`, () => runs.filter((r) => r.outcome === "ok").length >= 3);
        await bucket.touch(Unit, `${mode} 1`);
        await waitFor(`the touched run with ${mode} dispatch`, () => runs.filter((r) => r.outcome === "ok").length >= 4);
        expect(await bucket.matter(Unit, `${mode} 1`)).toMatchObject({ state: "ok", cache: { id: `${mode} 1` } });
        // The dead-worker check (pg_locks, delete from dmm_worker) works too: a worker row
        // whose advisory lock nobody holds is reaped.
        const rt = postgres(as(runtime), { max: 1, onnotice: () => {} });
        await rt`insert into dmm.dmm_worker (id, namespace, lock_key, host, pid) values (${`ghost-${mode}`}, ${bucket.namespace}, ${randomInt(2, 2 ** 31 - 1)}, 'nowhere', 1)`;
        await waitFor("the ghost worker to be reaped", async () => (await rt`select 1 from dmm.dmm_worker where id = ${`ghost-${mode}`}`).length === 0);
        await rt.end();
        expect(lines.filter((l) => l.level === "error" || /error$/.test(l.msg))).toEqual([]);
        await bucket.close();
        await work;
      }

      const rt = postgres(as(runtime), { max: 1, onnotice: () => {} });
      // What dmm needs from any role, shown explicitly.
      await rt`select pg_advisory_lock(6581613, 424242), pg_advisory_unlock(6581613, 424242)`;
      await rt`select count(*) from pg_locks where locktype = 'advisory'`;
      await rt`select pg_notify('dmm_outbox', 'probe:probe')`;
      await (await rt.listen("dmm_outbox", () => {})).unlisten();
      // And what it must not be able to do.
      const forbidden = [
        "drop table dmm.dmm_matter",
        "truncate dmm.dmm_outbox",
        "alter table dmm.dmm_matter add column evil int",
        "drop trigger \"10_dmm_matter__outbox_insert\" on dmm.dmm_matter",
        "create table dmm.evil (x int)",
        "create table public.evil (x int)",
        "create schema evil",
        "create or replace function dmm.merge_cache(base jsonb, mine jsonb, theirs jsonb) returns jsonb language sql as 'select mine'",
        "delete from dmm.dmm_migrations",
        "select * from public.app_secret",
        `set role "${migrator}"`,
        "create temp table t (x int)",
      ];
      for (const statement of forbidden) {
        const err = await rt.unsafe(statement).catch((e: unknown) => e);
        expect(err, statement).toBeInstanceOf(Error);
        expect((err as { code?: string }).code, `${statement}: ${(err as Error).message}`).toBe("42501");
      }
      const refused = await migrate(as(runtime)).catch((e: unknown) => e);
      expect(((refused as { cause?: { code?: string } }).cause ?? (refused as { code?: string }))?.code).toBe("42501");
      await rt.end();
    } finally {
      await owner?.end();
      await admin.unsafe(`drop database if exists "${database}" with (force)`);
      await admin.unsafe(`drop role if exists "${runtime}"; drop role if exists "${migrator}"`);
      await admin.end();
    }
  });
});
