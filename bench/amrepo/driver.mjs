// The devices of the same-workload comparison: D automerge-repo Repos, one per device, each
// with its own WebSocket connection to the sync server and one document in the layout the
// edge writes (`sync-core/src/facts.rs`, `edge-node/src/live.rs` put_rental).
//
//   node driver.mjs --url ws://127.0.0.1:PORT --devices D --rentals R
//
// Setup (not timed): every device connects, creates its document with its header
// (schema, device, branch) and waits until the server holds it. Then every device, at once,
// lends and returns R rentals: each lend and each return is one change, written back to back
// (the repo syncs after each change as it does for any application). Prints on stdout:
//   {"started_at_ms": T}                      just before the first write (Unix ms)
//   {"written_at_ms": T, "events": 2*D*R, "cpu_ms": C}
//       every change is written locally (C: the devices' CPU time spent writing and syncing)
// and stays connected (so unsent changes still reach the server) until stdin closes.

import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { Uint } from "@automerge/automerge";
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";

const SETUP_TIMEOUT_MS = 60_000;
const DEVICES_PER_BRANCH = 10;

const now = () => performance.timeOrigin + performance.now();
const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    devices: { type: "string" },
    rentals: { type: "string" },
  },
});
const devices = Number.parseInt(values.devices ?? "", 10);
const rentals = Number.parseInt(values.rentals ?? "", 10);
if (!values.url || !(devices > 0) || !(rentals > 0)) {
  console.error("usage: node driver.mjs --url ws://HOST:PORT --devices D --rentals R (D, R > 0)");
  process.exit(2);
}

async function until(what, done) {
  const deadline = Date.now() + SETUP_TIMEOUT_MS;
  while (!done()) {
    if (Date.now() > deadline) {
      console.error(`setup: ${what} did not happen within ${SETUP_TIMEOUT_MS / 1000} s`);
      process.exit(1);
    }
    await sleep(5);
  }
}

function heads(handle) {
  return [...handle.heads()].sort().join(",");
}

/// Whether the server (the peer with storage) has told us it holds our heads.
function serverHolds(repo, handle) {
  const storageId = repo.peers.map((p) => repo.getStorageIdOfPeer(p)).find(Boolean);
  const theirs = storageId && handle.getSyncInfo(storageId)?.lastHeads;
  return Boolean(theirs) && [...theirs].sort().join(",") === heads(handle);
}

const HLC_NODE = (i) => (0x5eed0000 + i).toString(16).padStart(16, "0");
const hlc = (wall, counter, node) =>
  `${wall.toString(16).padStart(12, "0")}-${counter.toString(16).padStart(4, "0")}-${node}`;

class Device {
  constructor(index, branch) {
    this.index = index;
    this.node = HLC_NODE(index);
    this.boot = randomUUID();
    this.counter = 0;
    this.repo = new Repo({
      network: [new WebSocketClientAdapter(values.url)],
      peerId: `device-${index}`,
    });
    this.branch = branch;
  }

  async setup() {
    await until(`device ${this.index} connecting to ${values.url}`, () =>
      this.repo.peers.length > 0 && this.repo.getStorageIdOfPeer(this.repo.peers[0]),
    );
    this.handle = this.repo.create({ schema: 1, device: randomUUID(), branch: this.branch });
    await until(`the server holding device ${this.index}'s document`, () =>
      serverHolds(this.repo, this.handle),
    );
  }

  stamp() {
    const wall = Date.now();
    this.counter = (this.counter + 1) & 0xffff;
    return { wall, mono: Math.round(performance.now() * 1e6), hlc: hlc(wall, this.counter, this.node) };
  }

  /// The lend: every field of the rental, as the edge's first put_rental writes it.
  lend(id, k) {
    const s = this.stamp();
    const minutes = 60;
    this.handle.change((d) => {
      d.rentals ??= {};
      d.rentals[id] = {
        start_at: s.wall,
        expected_at: s.wall + minutes * 60_000,
        end_at: null,
        time_trusted: true,
        phone: `+4915${String(10_000_000 + this.index * 1000 + k).padStart(9, "0")}`,
        post: new Uint(1 + (k % 12)),
        status: "active",
        minutes: new Uint(minutes),
        start_wall: s.wall,
        start_boot: this.boot,
        start_mono: s.mono,
        start_hlc: s.hlc,
        taken_hlc: null,
        end_wall: null,
        end_boot: null,
        end_mono: null,
        end_hlc: null,
        return_post: null,
        note: null,
      };
    });
  }

  /// The return: the fields the edge's put_rental changes when the cart docks.
  giveBack(id, k) {
    const s = this.stamp();
    this.handle.change((d) => {
      const r = d.rentals[id];
      r.end_at = s.wall;
      r.status = "returned";
      r.end_wall = s.wall;
      r.end_boot = this.boot;
      r.end_mono = s.mono;
      r.end_hlc = s.hlc;
      r.return_post = new Uint(1 + ((k + 1) % 12));
    });
  }

  async run() {
    for (let k = 0; k < rentals; k++) {
      const id = randomUUID();
      this.lend(id, k);
      await tick();
      this.giveBack(id, k);
      await tick();
    }
  }
}

const branches = Array.from({ length: Math.ceil(devices / DEVICES_PER_BRANCH) }, () => randomUUID());
const fleet = Array.from(
  { length: devices },
  (_, i) => new Device(i, branches[Math.floor(i / DEVICES_PER_BRANCH)]),
);
await Promise.all(fleet.map((d) => d.setup()));

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const cpuAtStart = process.cpuUsage();
print({ started_at_ms: now() });
await Promise.all(fleet.map((d) => d.run()));
const { user, system } = process.cpuUsage(cpuAtStart);
print({ written_at_ms: now(), events: 2 * devices * rentals, cpu_ms: (user + system) / 1000 });

process.stdin.resume();
process.stdin.on("end", async () => {
  await Promise.all(fleet.map((d) => d.repo.shutdown().catch(() => {})));
  process.exit(0);
});
