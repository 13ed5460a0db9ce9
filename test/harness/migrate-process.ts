/** Runs dmm's migrate() once against argv[2] and prints the result; for concurrent-migration tests. */
import { migrate } from "../../src/bucket.js";

const result = await migrate(process.argv[2]!);
process.stdout.write(`${JSON.stringify(result)}\n`);
