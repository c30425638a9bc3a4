// The automerge-repo sync server of the same-workload comparison: a Repo with the WebSocket
// server adapter and durable file-system storage, as automerge-repo's own sync server is built.
//
//   node server.mjs --dir DIR --devices D --rentals R
//
// Prints one JSON line per event on stdout:
//   {"listening": PORT}                 the WebSocket server accepts connections
//   {"converged_at_ms": T, "documents": D, "cpu_ms": C}
//       every device document holds its R rentals returned and has been written to storage
//       (T: Unix ms, fractional; C: the server's CPU time since it started)
// Exits when stdin closes (the bench closes it when it is done).

import { WebSocketServer } from "ws";
import { Repo } from "@automerge/automerge-repo";
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { parseArgs } from "node:util";
import { hostname } from "node:os";

const now = () => performance.timeOrigin + performance.now();

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    devices: { type: "string" },
    rentals: { type: "string" },
  },
});
const devices = Number.parseInt(values.devices ?? "", 10);
const rentals = Number.parseInt(values.rentals ?? "", 10);
if (!values.dir || !(devices > 0) || !(rentals > 0)) {
  console.error("usage: node server.mjs --dir DIR --devices D --rentals R (D, R > 0)");
  process.exit(2);
}

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(values.dir),
  peerId: `sync-server-${hostname()}`,
  // A sync server does not announce documents; it serves the ones peers ask for.
  sharePolicy: async () => false,
});

// Documents whose final state is written to storage, and those being written.
const done = new Set();
const flushing = new Set();
let reported = false;

function isFinal(doc) {
  const map = doc?.rentals;
  if (!map) return false;
  const rows = Object.values(map);
  return rows.length === rentals && rows.every((r) => r.status === "returned");
}

function check(documentId) {
  if (done.has(documentId) || flushing.has(documentId)) return;
  const handle = repo.handles[documentId];
  if (!handle || !handle.isReady() || !isFinal(handle.doc())) return;
  flushing.add(documentId);
  repo
    .flush([documentId])
    .then(() => {
      flushing.delete(documentId);
      done.add(documentId);
      if (!reported && done.size >= devices) {
        reported = true;
        const { user, system } = process.cpuUsage();
        const line = { converged_at_ms: now(), documents: done.size, cpu_ms: (user + system) / 1000 };
        process.stdout.write(`${JSON.stringify(line)}\n`);
      }
    })
    .catch((err) => {
      flushing.delete(documentId);
      console.error(`writing document ${documentId} to ${values.dir} failed: ${err}`);
      process.exit(1);
    });
}

// A document can reach its final state whenever its heads change. The metrics event of a
// received sync message comes before the message is applied: it only says which documents
// to watch.
const watched = new Set();
repo.on("doc-metrics", (event) => {
  if (event.type !== "receive-sync-message" || watched.has(event.documentId)) return;
  const handle = repo.handles[event.documentId];
  if (!handle) return;
  watched.add(event.documentId);
  handle.on("heads-changed", () => check(event.documentId));
  setImmediate(() => check(event.documentId));
});

wss.on("listening", () => {
  process.stdout.write(`${JSON.stringify({ listening: wss.address().port })}\n`);
});
wss.on("error", (err) => {
  console.error(`the sync server cannot listen: ${err}`);
  process.exit(1);
});

process.stdin.resume();
process.stdin.on("end", async () => {
  await repo.shutdown().catch(() => {});
  wss.close();
  process.exit(0);
});
