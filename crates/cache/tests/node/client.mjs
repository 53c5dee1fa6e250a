// Drives the real @actions/cache client for hangar's tests and benchmark.
//
// usage: node client.mjs <node_modules dir> <cache6|cache5> '<JSON list of operations>'
//   operation: {"op": "save"|"restore", "key": "...", "restoreKeys": [...],
//               "paths": [...], "workspace": "/abs", "token": "..."}
//
// Loading the client takes seconds on a busy machine, so one process runs a
// batch. Each operation runs as a runner would run it: its workspace is the
// cwd and GITHUB_WORKSPACE, its token ACTIONS_RUNTIME_TOKEN (the client reads
// both at call time). The rest of the environment (ACTIONS_RESULTS_URL or
// ACTIONS_CACHE_URL, ACTIONS_CACHE_SERVICE_V2, RUNNER_TEMP) comes from the
// caller. Output per operation:
//   HANGAR_BEGIN <i>
//   ...the client's own log lines, including any ::warning::...
//   HANGAR_RESULT <i> {"id": <number>, "ms": <number>}            (save; -1 = not saved)
//   HANGAR_RESULT <i> {"key": <string|null>, "ms": <number>}      (restore)
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [modules, client, script] = process.argv.slice(2);
const loaded = await import(pathToFileURL(join(modules, client, 'lib', 'cache.js')).href);
const cache = loaded.saveCache ? loaded : loaded.default;

const ops = JSON.parse(script);
for (const [i, op] of ops.entries()) {
  console.log(`HANGAR_BEGIN ${i}`);
  process.chdir(op.workspace);
  process.env.GITHUB_WORKSPACE = op.workspace;
  process.env.ACTIONS_RUNTIME_TOKEN = op.token;
  const started = performance.now();
  let result;
  if (op.op === 'save') {
    const id = await cache.saveCache(op.paths, op.key);
    result = { id };
  } else if (op.op === 'restore') {
    const key = await cache.restoreCache(op.paths, op.key, op.restoreKeys ?? []);
    result = { key: key ?? null };
  } else {
    throw new Error(`unknown op ${op.op}`);
  }
  result.ms = performance.now() - started;
  console.log(`HANGAR_RESULT ${i} ${JSON.stringify(result)}`);
}
