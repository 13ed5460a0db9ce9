/**
 * Static check of how src/ builds SQL. Every statement must be a tagged template (Drizzle's
 * `sql` or postgres.js), whose substitutions are sent as bind parameters. The escape hatches
 * that splice text into a statement — Drizzle's `sql.raw()` / `sql.identifier()`, postgres.js's
 * `unsafe()`, and `execute()` with a plain string — may only be given constants: string literals,
 * or templates whose every substitution is a module-level `const` bound to a string literal.
 * Each such use is listed below with the reason it exists, so a new one fails this test until
 * someone has looked at it (and an edited line fails it too: look again, then update the key).
 */
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const SRC = fileURLToPath(new URL("../../src", import.meta.url));

/** The reviewed uses, as `file: line of the call`, with why each is needed and safe. */
const ALLOWED: Record<string, string> = {
  "store/claim.ts: export const CLAIMABLE = sql.raw(":
    "a constant WHERE fragment used by the sweep (the claim functions of migration 0003 spell the same condition); no input reaches it",
  "store/db.ts: export const SOFT_COMMIT: SQL = sql.raw(`(select set_config('synchronous_commit', 'off', true)) as soft_commit`);":
    "a constant FROM item (asynchronous commit for the dispatch bookkeeping statements); no input reaches it",
  "store/matter.ts: const COLUMNS = sql.raw(`namespace, kind, identity, cache, generation::text, observed_generation::text, attempts, last_error,":
    "a constant column list with the derived state, shared by readMatter and listMatters; no input reaches it",
  'store/sweep.ts: const table = relname === "dmm_outbox" ? sql.raw("dmm.dmm_outbox") : sql.raw("dmm.dmm_matter");':
    "picks one of two constant table names for VACUUM/ANALYZE, which cannot take bind parameters",
  'store/migrate.ts: const r = await conn.unsafe(`select count(*)::int as n from "${MIGRATIONS_SCHEMA}"."${MIGRATIONS_TABLE}"`);':
    "counts applied migrations in dmm's own bookkeeping table, named by module constants; identifiers cannot be bind parameters",
  "store/migrate.ts: const applied = await client.unsafe(":
    "reads dmm's migration bookkeeping table, named by module constants; identifiers cannot be bind parameters",
};

/**
 * Reviewed uses whose text is not a constant but the output of Drizzle's own compiler: the SQL
 * of a tagged `sql` template, every value in it a bind parameter. Exempt from the constants
 * check, listed here with the reason.
 */
const COMPILED: Record<string, string> = {
  "store/db.ts: result = await direct.client.unsafe(q.sql, q.params as never[], { prepare: true });":
    "runs `dialect.sqlToQuery(query)` of a tagged template (what Drizzle's execute runs) as a prepared statement; values travel in q.params",
};

interface Use {
  /** `file: first line of the call`, the key of ALLOWED. */
  key: string;
  where: string;
  /** Why the argument is not a constant, or null when it is. */
  problem: string | null;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return sourceFiles(full);
    return name.endsWith(".ts") && !name.endsWith(".d.ts") ? [full] : [];
  });
}

/** Module-level `const NAME = "literal"` (or a no-substitution template) of every file, by file. */
function stringConstants(files: Map<string, ts.SourceFile>): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  for (const [file, source] of files) {
    const consts = new Map<string, string>();
    for (const stmt of source.statements) {
      if (!ts.isVariableStatement(stmt) || !(stmt.declarationList.flags & ts.NodeFlags.Const)) continue;
      for (const d of stmt.declarationList.declarations) {
        if (ts.isIdentifier(d.name) && d.initializer && (ts.isStringLiteral(d.initializer) || ts.isNoSubstitutionTemplateLiteral(d.initializer))) {
          consts.set(d.name.text, d.initializer.text);
        }
      }
    }
    out.set(file, consts);
  }
  return out;
}

/** Resolves an identifier to a string constant of its own module or of a relative import. */
function constantOf(name: string, file: string, source: ts.SourceFile, consts: Map<string, Map<string, string>>): string | undefined {
  const own = consts.get(file)?.get(name);
  if (own !== undefined) return own;
  for (const stmt of source.statements) {
    if (!ts.isImportDeclaration(stmt) || !ts.isStringLiteral(stmt.moduleSpecifier)) continue;
    const bindings = stmt.importClause?.namedBindings;
    if (!bindings || !ts.isNamedImports(bindings)) continue;
    for (const el of bindings.elements) {
      if (el.name.text !== name) continue;
      const target = path.resolve(path.dirname(file), stmt.moduleSpecifier.text.replace(/\.js$/, ".ts"));
      return consts.get(target)?.get((el.propertyName ?? el.name).text);
    }
  }
  return undefined;
}

/** Why `arg` is not built from constants only, or null. */
function problemOf(arg: ts.Expression | undefined, file: string, source: ts.SourceFile, consts: Map<string, Map<string, string>>): string | null {
  if (!arg) return "no argument";
  if (ts.isStringLiteral(arg) || ts.isNoSubstitutionTemplateLiteral(arg)) return null;
  if (ts.isTemplateExpression(arg)) {
    for (const span of arg.templateSpans) {
      const e = span.expression;
      if (!ts.isIdentifier(e) || constantOf(e.text, file, source, consts) === undefined) {
        return `substitutes \${${e.getText(source)}}, which is not a module-level string constant`;
      }
    }
    return null;
  }
  if (ts.isIdentifier(arg) && constantOf(arg.text, file, source, consts) !== undefined) return null;
  return `is given ${ts.SyntaxKind[arg.kind]} \`${arg.getText(source).slice(0, 60)}\`, not a constant`;
}

/** Every call in `files` that splices text into SQL; keys are relative to `root`. */
function findUses(files: Map<string, ts.SourceFile>, root: string): Use[] {
  const consts = stringConstants(files);
  const uses: Use[] = [];
  for (const [file, source] of files) {
    const visit = (node: ts.Node): void => {
      if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression)) {
        const method = node.expression.name.text;
        const arg = node.arguments[0];
        const raw =
          method === "raw" ||
          method === "identifier" ||
          method === "unsafe" ||
          (method === "execute" && arg !== undefined && (ts.isStringLiteral(arg) || ts.isTemplateLiteral(arg) || ts.isBinaryExpression(arg)));
        if (raw) {
          const { line } = source.getLineAndCharacterOfPosition(node.getStart(source));
          const rel = path.relative(root, file).split(path.sep).join("/");
          const firstLine = source.text.split("\n")[line]!.trim();
          uses.push({ key: `${rel}: ${firstLine}`, where: `src/${rel}:${line + 1}`, problem: problemOf(arg, file, source, consts) });
        }
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return uses;
}

function parseFiles(entries: [string, string][]): Map<string, ts.SourceFile> {
  return new Map(entries.map(([file, text]) => [file, ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)]));
}

describe("SQL built by src/", () => {
  const uses = findUses(parseFiles(sourceFiles(SRC).map((f) => [f, readFileSync(f, "utf8")])), SRC);

  it("splices only constants into SQL text through sql.raw, sql.identifier, unsafe or execute(string)", () => {
    const bad = uses.filter((u) => u.problem !== null && !(u.key in COMPILED)).map((u) => `${u.where} ${u.problem}`);
    expect(bad, "build the statement as a tagged template so that values become bind parameters").toEqual([]);
  });

  it("has a reviewed reason for every raw SQL use, and no stale entry in the list", () => {
    // Two uses on one line share a key (and a reason).
    const found = [...new Set(uses.map((u) => u.key))].sort();
    expect(found, "add new raw SQL uses to ALLOWED with the reason they are safe, or remove stale entries").toEqual([...Object.keys(ALLOWED), ...Object.keys(COMPILED)].sort());
  });

  it("flags raw SQL built from variables, concatenation or imported non-constants (the scanner is not blind)", () => {
    const files = parseFiles([
      ["/x/names.ts", 'export const TABLE = "t"; export let loose = "l";'],
      [
        "/x/probe.ts",
        [
          'import { TABLE, loose } from "./names.js";',
          'const COLS = "a, b";',
          "const ok1 = sql.raw(`select ${COLS} from ${TABLE}`);",
          'const ok2 = client.unsafe("select 1");',
          "const bad1 = sql.raw(`select ${loose}`);",
          'const bad2 = conn.unsafe("select " + name);',
          "const bad3 = db.execute(`select * from t where id = ${id}`);",
          "const bad4 = sql.identifier(userInput);",
          "const fine = db.execute(sql`select ${id}`);",
        ].join("\n"),
      ],
    ]);
    const found = findUses(files, "/x").map((u) => [u.key.split(": ")[1]!.split(" = ")[0], u.problem === null]);
    expect(found).toEqual([
      ["const ok1", true],
      ["const ok2", true],
      ["const bad1", false],
      ["const bad2", false],
      ["const bad3", false],
      ["const bad4", false],
    ]);
  });
});
