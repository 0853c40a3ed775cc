"""Peers run beside seqd in the benchmarks: BullMQ (Node.js, installed with npm under
`benchmarks/.peers/` on first use) and its scripts, one per kind of work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PEERS = Path(__file__).parent / ".peers"
NPM_INSTALL = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix"]

# One fetch POST per job to the sink; the jobs added with addBulk, 1,000 at a time, on "go".
SEND_JS = r"""
const { Queue, Worker } = require('bullmq');
const [n, port, sink, concurrency] = process.argv.slice(2).map((v, i) => i === 2 ? v : +v);
const connection = { host: '127.0.0.1', port };
const readline = require('readline');
process.on('unhandledRejection', (e) => { console.error(e); process.exit(1); });
(async () => {
  const worker = new Worker('e2e', async (job) => {
    const r = await fetch(sink, { method: 'POST', headers: { 'content-type': 'application/json' },
                                  body: JSON.stringify(job.data) });
    await r.arrayBuffer();
    if (r.status !== 201) throw new Error('status ' + r.status);
  }, { connection, concurrency, removeOnComplete: { count: 0 } });
  const queue = new Queue('e2e', { connection });
  await worker.waitUntilReady();
  await queue.waitUntilReady();
  console.log('ready');
  const rl = readline.createInterface({ input: process.stdin });
  rl.once('line', async () => {
    for (let start = 0; start < n; start += 1000) {
      const jobs = [];
      for (let i = start; i < Math.min(n, start + 1000); i++) {
        jobs.push({ name: 's', data: { to: '+1415' + String(i).padStart(7, '0'), body: 'Hi there' },
                    opts: { removeOnComplete: true } });
      }
      await queue.addBulk(jobs);
    }
    console.log('added');
  });
})();
"""

# A no-op job each, the seqd dispatch benchmark's no-op sink: `n` jobs added with addBulk
# first, then a worker drains them; prints the drain's jobs/s and the process's CPU µs per job.
NOOP_JS = r"""
const { Queue, Worker } = require('bullmq');
const [n, port, concurrency] = process.argv.slice(2).map(Number);
const connection = { host: '127.0.0.1', port };
process.on('unhandledRejection', (e) => { console.error(e); process.exit(1); });
(async () => {
  const queue = new Queue('noop', { connection });
  await queue.obliterate({ force: true });
  for (let start = 0; start < n; start += 1000) {
    const jobs = [];
    for (let i = start; i < Math.min(n, start + 1000); i++) {
      jobs.push({ name: 'n', data: { i }, opts: { removeOnComplete: true } });
    }
    await queue.addBulk(jobs);
  }
  let done = 0;
  let started;
  let cpu;
  const finished = new Promise((resolve) => {
    const worker = new Worker('noop', async () => {}, { connection, concurrency, autorun: false });
    worker.on('completed', () => { if (++done === n) resolve(worker); });
    started = process.hrtime.bigint();
    cpu = process.cpuUsage();
    worker.run();
  });
  const worker = await finished;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const used = process.cpuUsage(cpu);
  console.log(JSON.stringify({ rate: n / seconds, cpu_us: (used.user + used.system) / n }));
  await worker.close();
  await queue.close();
  process.exit(0);
})();
"""


def bullmq_ready() -> bool:
    """Whether node is here and BullMQ installed (installed now when missing); the peers'
    scripts are written beside it."""
    if shutil.which("node") is None:
        return False
    if not (PEERS / "node_modules" / "ioredis").exists():
        PEERS.mkdir(exist_ok=True)
        done = subprocess.run(
            [*NPM_INSTALL, str(PEERS), "bullmq", "ioredis"],
            capture_output=True,
            timeout=300,
        )
        if done.returncode != 0:
            print("bullmq: npm install failed:", done.stderr.decode()[-500:])
            return False
    (PEERS / "worker.js").write_text(SEND_JS)
    (PEERS / "noop.js").write_text(NOOP_JS)
    return True
