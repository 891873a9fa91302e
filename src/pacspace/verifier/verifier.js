// pacspace evidence verifier: checks a pacspace.evidence/v1 bundle entirely in this browser, with WebCrypto.
// It mirrors pacspace.client.evidence.verify_bundle: the same checks, in the same order, with the same outcome,
// including each signed body's schema (records/body.py decode_body) and the protocol rules (records/rules.py), whose
// findings it words as rules.py does. tests/vectors/pacspace-evidence.json holds both to the same answers.
// Quantities are decimal strings added exactly (scaled big integers); no float ever touches one.
"use strict";

const FORMAT = "pacspace.evidence/v1";
const PARTY_KEYS = "pacspace/v1 party keys\n";
const COMMITMENT = "pacspace/v1 key commitment";
const ALG_ED25519 = 0x01;
const ALG_COSIGNATURE = 0x04;
const MAX_NOTE = 65536;
const MAX_TIMESTAMP = (1n << 63n) - 1n;
const DECIMAL = /^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$/;
const COUNT = /^(0|[1-9][0-9]{0,18})$/;
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
const enc = new TextEncoder();
// ignoreBOM keeps a leading byte-order mark in the text (the default drops it): Python's decoder refuses it, so must this.
const strictUtf8 = new TextDecoder("utf-8", {fatal: true, ignoreBOM: true});

class Failed extends Error {}
function fail(message) { throw new Failed(message); }

// --- bytes ---------------------------------------------------------------------------

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
function equal(a, b) { return a.length === b.length && a.every((x, i) => x === b[i]); }
function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""); }
function toB64(bytes) { return btoa(String.fromCharCode(...bytes)); }

function b64(text, what, size) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    fail(`${what} is not base64`);
  }
  const binary = atob(text);
  const out = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (size !== undefined && out.length !== size) fail(`${what} is not ${size} bytes`);
  return out;
}
function b64Strict(text, what, size) {
  const out = b64(text, what, size);
  if (toB64(out) !== text) fail(`${what} is not canonical base64`);
  return out;
}

// --- WebCrypto ---------------------------------------------------------------------------

async function sha256(data) { return new Uint8Array(await crypto.subtle.digest("SHA-256", data)); }
async function hmac(key, message) {
  const k = await crypto.subtle.importKey("raw", key, {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, message));
}
async function ed25519(publicKey, signature, message) {
  if (signature.length !== 64) return false;
  let key;
  try {
    key = await crypto.subtle.importKey("raw", publicKey, {name: "Ed25519"}, false, ["verify"]);
  } catch (e) {
    if (e instanceof DOMException && e.name === "NotSupportedError") {
      fail("this browser's WebCrypto cannot check Ed25519 signatures: open the page in a current Chromium, " +
           "Firefox or Safari");
    }
    return false;  // not a valid public key
  }
  return crypto.subtle.verify({name: "Ed25519"}, key, signature, message);
}
async function aesGcmOpen(key, nonce, ciphertext, aad) {
  const k = await crypto.subtle.importKey("raw", key, {name: "AES-GCM"}, false, ["decrypt"]);
  try {
    return new Uint8Array(await crypto.subtle.decrypt({name: "AES-GCM", iv: nonce, additionalData: aad,
                                                       tagLength: 128}, k, ciphertext));
  } catch (e) {
    return null;
  }
}

// --- exact decimals ------------------------------------------------------------------------

function parseDecimal(text, what) {
  if (typeof text !== "string" || text.length > 64 || !DECIMAL.test(text) || text === "-0") {
    fail(`${what} is not a canonical decimal string`);
  }
  const [whole, fraction = ""] = text.split(".");
  return {units: BigInt(whole + fraction), scale: fraction.length};
}
function formatDecimal(units, scale) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(scale + 1, "0");
  const whole = digits.slice(0, digits.length - scale);
  const fraction = digits.slice(digits.length - scale).replace(/0+$/, "");
  const text = whole + (fraction ? "." + fraction : "");
  return text === "0" ? "0" : (negative ? "-" : "") + text;
}
function addDecimals(a, b) {
  const x = parseDecimal(a, "a quantity"), y = parseDecimal(b, "a quantity");
  const scale = Math.max(x.scale, y.scale);
  const units = x.units * 10n ** BigInt(scale - x.scale) + y.units * 10n ** BigInt(scale - y.scale);
  return formatDecimal(units, scale);
}

// --- canonical JSON (records.canonical) ------------------------------------------------------------

function byCodePoint(a, b) {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}
function canonical(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "string") {
    // A lone surrogate has no UTF-8 form: Python's encoder refuses it, so this one does too.
    if (LONE_SURROGATE.test(value)) fail("a record body holds a lone surrogate: it is not UTF-8 text");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  if (typeof value === "object") {
    return "{" + Object.keys(value).sort(byCodePoint).map((k) => canonical(k) + ":" + canonical(value[k])).join(",") + "}";
  }
  fail("a record body holds a number: numbers travel as strings");
}

// --- record bodies (records/body.py decode_body): the schema, exactly ----------------------------------

const SCHEMAS = new Map([["genesis", "pacspace.genesis/v1"], ["delta", "pacspace.usage_delta/v1"],
                         ["correction", "pacspace.correction/v1"], ["close", "pacspace.close/v1"]]);
const GENESIS_PREV = "0".repeat(64);
const COMMON = ["schema", "kind", "relationship", "seq", "prev", "record_id", "created_at"];
const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$/;
const HEX32 = /^[0-9a-f]{64}$/;
const TIME = /^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$/;
const PERIOD = /^[0-9]{4}-(0[1-9]|1[0-2])$/;
const CADENCE = /^(daily|hourly|[1-9][0-9]{0,3}m)$/;
const BILLING_CYCLES = ["monthly"];

class InvalidBody extends Error {}
function invalid(message) { throw new InvalidBody(message); }

function isObject(value) { return value !== null && typeof value === "object" && !Array.isArray(value); }
function has(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }
function keys(obj, required, optional, what) {
  if (!isObject(obj)) invalid(`${what} must be an object`);
  const missing = required.filter((k) => !has(obj, k));
  const extra = Object.keys(obj).filter((k) => !required.includes(k) && !(optional || []).includes(k));
  if (missing.length) invalid(`${what} lacks ${missing.sort(byCodePoint).join(", ")}`);
  if (extra.length) invalid(`${what} has unknown fields ${extra.sort(byCodePoint).join(", ")}`);
  return obj;
}
function match(pattern, value, what) {
  if (typeof value !== "string" || !pattern.test(value)) invalid(`${what} is malformed: ${JSON.stringify(value)}`);
  return value;
}
function count(value, what) {
  if (typeof value !== "string" || !COUNT.test(value)) invalid(`${what} must be a non-negative integer string`);
  return BigInt(value);
}
function quantity(value, what) {
  if (typeof value !== "string" || value.length > 64 || !DECIMAL.test(value) || value === "-0") {
    invalid(`${what} must be a canonical decimal string`);
  }
  return value;
}
function dimensions(value) {
  if (!isObject(value) || Object.keys(value).length > 32) invalid("dimensions must be an object of at most 32 string pairs");
  for (const [k, v] of Object.entries(value)) {
    match(NAME, k, "dimension name");
    if (typeof v !== "string" || Array.from(v).length > 256) {
      invalid(`dimension ${JSON.stringify(k)} must be a string of at most 256 characters`);
    }
  }
}
function line(obj) {
  keys(obj, ["meter", "unit", "quantity", "dimensions"], ["event_count", "late"], "line");
  if (has(obj, "late") && obj.late !== "true") invalid('a line\'s "late" flag is "true" or absent');
  if (has(obj, "event_count")) count(obj.event_count, "event_count");
  match(NAME, obj.meter, "meter");
  match(NAME, obj.unit, "unit");
  quantity(obj.quantity, `quantity of ${obj.meter}`);
  dimensions(obj.dimensions);
  return obj;
}
function partyKeys(obj, what) {
  keys(obj, ["name", "x25519", "ed25519"], [], what);
  for (const k of ["name", "x25519", "ed25519"]) {
    if (typeof obj[k] !== "string" || !obj[k]) invalid(`${what}.${k} must be a non-empty string`);
  }
}
function lineKey(l) {
  return JSON.stringify([l.meter, l.unit, Object.keys(l.dimensions).sort(byCodePoint).map((k) => [k, l.dimensions[k]])]);
}
function checkBody(obj) {
  if (!isObject(obj)) invalid("a body is an object");
  const kind = has(obj, "kind") ? obj.kind : undefined;
  if (!SCHEMAS.has(kind) || obj.schema !== SCHEMAS.get(kind)) invalid("unknown kind or schema");
  match(ID, obj.relationship, "relationship");
  const seq = count(obj.seq, "seq");
  if (seq >= 1n << 63n) invalid(`seq ${seq} is out of range`);
  match(HEX32, obj.prev, "prev");
  match(ID, obj.record_id, "record_id");
  match(TIME, obj.created_at, "created_at");
  if (kind === "genesis") {
    keys(obj, [...COMMON, "provider", "customer", "cadence", "billing_cycle"], [], "body");
    partyKeys(obj.provider, "provider");
    partyKeys(obj.customer, "customer");
    if (seq !== 0n || obj.prev !== GENESIS_PREV) invalid("genesis is seq 0 with an all-zero prev");
    match(CADENCE, obj.cadence, "cadence");
    if (!BILLING_CYCLES.includes(obj.billing_cycle)) invalid(`billing_cycle must be one of ${BILLING_CYCLES.join(", ")}`);
  } else if (kind === "delta" || kind === "correction") {
    keys(obj, [...COMMON, "period", "window", "lines", ...(kind === "correction" ? ["corrects"] : [])], ["evidence"], "body");
    keys(obj.window, ["start", "end"], [], "window");
    if (!Array.isArray(obj.lines)) invalid("lines must be a list");
    obj.lines.forEach(line);
    const corrects = kind === "correction" ? count(obj.corrects, "corrects") : null;
    if (seq === 0n) invalid("seq 0 is the genesis record");
    match(PERIOD, obj.period, "period");
    match(TIME, obj.window.start, "window.start");
    match(TIME, obj.window.end, "window.end");
    if (obj.window.end < obj.window.start) invalid("window ends before it starts");
    if (obj.lines.length === 0 || obj.lines.length > 1000) invalid("a delta has 1 to 1000 lines");
    if (new Set(obj.lines.map((l) => lineKey(l) + (l.late === "true" ? "+late" : ""))).size !== obj.lines.length) {
      invalid("two lines share a meter, unit, dimensions and lateness");
    }
    if (has(obj, "evidence")) {
      const evidence = keys(obj.evidence, [], ["events_root", "events_count", "source"], "evidence");
      if (has(evidence, "events_root")) match(HEX32, evidence.events_root, "evidence.events_root");
      if (has(evidence, "events_count")) count(evidence.events_count, "evidence.events_count");
      if (has(evidence, "source")) match(NAME, evidence.source, "evidence.source");
    }
    if (corrects !== null && !(0n < corrects && corrects < seq)) invalid("a correction corrects an earlier delta");
  } else {
    keys(obj, [...COMMON, "period", "first_seq", "last_seq", "record_count", "chain_head", "totals"], [], "body");
    if (!Array.isArray(obj.totals)) invalid("totals must be a list");
    const first = count(obj.first_seq, "first_seq"), last = count(obj.last_seq, "last_seq");
    const records = count(obj.record_count, "record_count");
    obj.totals.forEach(line);
    match(PERIOD, obj.period, "period");
    match(HEX32, obj.chain_head, "chain_head");
    if (!(0n < first && first <= last + 1n) || last >= seq) {
      invalid("a close covers earlier records: 0 < first_seq <= last_seq + 1 <= seq");
    }
    if (records > last - first + 1n) invalid("record_count cannot exceed the seqs covered");
  }
}
function decodeBody(bytes, seq) {
  let text, body;
  try {
    text = strictUtf8.decode(bytes);
    body = JSON.parse(text);
  } catch (e) {
    fail(`record ${seq}: the signed body is not JSON`);
  }
  try {
    checkBody(body);
  } catch (e) {
    if (!(e instanceof InvalidBody)) throw e;
    fail(`record ${seq}: the signed body does not follow its schema (${e.message})`);
  }
  // Every field is checked: the body is canonical if it re-encodes to exactly its bytes.
  let again;
  try {
    again = canonical(body);
  } catch (e) {
    if (!(e instanceof Failed)) throw e;
    fail(`record ${seq}: the signed body is not canonical JSON (${e.message})`);
  }
  if (again !== text) fail(`record ${seq}: the signed body is not canonical JSON`);
  return body;
}

// --- signed notes and checkpoints (note.py, checkpoint.py) ------------------------------------------

function checkKeyName(name, what) {
  if (!name || name.includes("+") || /[\s\u0000-\u001f]/.test(name)) fail(`${what}: invalid key name`);
}
async function keyId(name, alg, publicKey) {
  return (await sha256(concat(enc.encode(name + "\n"), new Uint8Array([alg]), publicKey))).slice(0, 4);
}
async function parseVkey(vkey) {
  const parts = vkey.trim().split("+");
  if (parts.length < 3) fail("the log key is not a vkey (<name>+<key ID>+<key>)");
  const [name, id] = parts, key64 = parts.slice(2).join("+");
  checkKeyName(name, "the log key");
  const raw = b64Strict(key64, "the log key's key");
  if (raw.length !== 33 || raw[0] !== ALG_ED25519) fail("the log key is not an Ed25519 (type 0x01) vkey");
  const publicKey = raw.slice(1);
  if (id !== hex(await keyId(name, ALG_ED25519, publicKey))) fail("the log key's key ID does not match its key");
  return {name, publicKey, vkey: vkey.trim()};
}
function parseNote(text) {
  if (enc.encode(text).length > MAX_NOTE) fail("a checkpoint is too large");
  if (/[\u0000-\u0009\u000b-\u001f]/.test(text)) fail("a checkpoint holds a control character");
  const split = text.lastIndexOf("\n\n");
  if (split < 0 || !text.endsWith("\n")) fail("a checkpoint has no signature block");
  const lines = text.slice(split + 2, -1).split("\n");
  if (lines.length > 100) fail("a checkpoint has too many signatures");
  const signatures = lines.map((line) => {
    if (!line.startsWith("\u2014 ")) fail("a checkpoint's signature line does not start with an em dash");
    const parts = line.slice(2).split(" ");
    if (parts.length !== 2) fail("a checkpoint's signature line is not '\u2014 <name> <signature>'");
    checkKeyName(parts[0], "a checkpoint signature");
    const raw = b64Strict(parts[1], "a checkpoint signature");
    if (raw.length < 5) fail("a checkpoint signature is too short");
    return {name: parts[0], id: raw.slice(0, 4), signature: raw.slice(4)};
  });
  return {text: text.slice(0, split + 1), signatures};
}
async function openCheckpoint(noteText, key) {
  const note = parseNote(noteText);
  const lines = note.text.split("\n");
  if (lines.length !== 4 || lines[3] !== "") fail("a checkpoint body is not origin, size and root");
  const [origin, size, root64] = lines;
  if (!/^(0|[1-9][0-9]{0,19})$/.test(size) || BigInt(size) >= 1n << 64n) fail("a checkpoint's size is malformed");
  const root = b64Strict(root64, "a checkpoint's root", 32);
  if (origin !== key.name) fail(`a checkpoint is of ${origin}, not of the log ${key.name}`);
  const message = enc.encode(note.text);
  const signId = await keyId(key.name, ALG_ED25519, key.publicKey);
  let signed = 0;
  for (const s of note.signatures) {
    if (s.name === key.name && equal(s.id, signId)) {
      if (!(await ed25519(key.publicKey, s.signature, message))) fail(`a checkpoint's signature by ${s.name} does not verify`);
      signed++;
    }
  }
  if (signed === 0) fail("a checkpoint carries no signature by the log key");
  const cosignId = await keyId(key.name, ALG_COSIGNATURE, key.publicKey);
  const cosig = note.signatures.find((s) => s.name === key.name && equal(s.id, cosignId));
  if (!cosig) fail("a checkpoint carries no timestamp cosignature by the log");
  if (cosig.signature.length !== 72) fail("the log's timestamp cosignature does not verify");
  const timestamp = new DataView(cosig.signature.buffer, cosig.signature.byteOffset, 8).getBigUint64(0);
  const cosigned = concat(enc.encode(`cosignature/v1\ntime ${timestamp}\n`), message);
  if (timestamp > MAX_TIMESTAMP || !(await ed25519(key.publicKey, cosig.signature.slice(8), cosigned))) {
    fail("the log's timestamp cosignature does not verify");
  }
  return {size: BigInt(size), root, timestamp};
}

// --- Merkle proofs (RFC 9162) ---------------------------------------------------------------------

async function leafHash(entry) { return sha256(concat(new Uint8Array([0]), entry)); }
async function nodeHash(left, right) { return sha256(concat(new Uint8Array([1]), left, right)); }
async function verifyInclusion(index, size, leaf, path, root, what) {
  let fn = BigInt(index), sn = size - 1n, r = leaf;
  if (fn > sn) fail(`${what}: index ${index} is beyond the tree`);
  for (const p of path) {
    if (sn === 0n) fail(`${what}: the inclusion proof is too long`);
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  if (sn !== 0n || !equal(r, root)) fail(`${what}: not in the log (its inclusion proof does not lead to the signed root)`);
}
async function publicEntry(tag, blob) { return concat(new Uint8Array([1]), tag, await sha256(blob)); }

// --- one record (records/seal.py) -----------------------------------------------------------

function bucket(size) {
  let b = 256;
  while (b < size) b *= 2;
  return b;
}
async function openRecord(seq, tag, blob, recordKey, provider) {
  if (blob.length < 61 || blob[0] !== 1) fail(`record ${seq}: not a version-1 sealed blob`);
  const nonce = blob.slice(1, 13), commitment = blob.slice(13, 45);
  if (!equal(commitment, await hmac(recordKey, enc.encode(COMMITMENT)))) {
    fail(`record ${seq}: the key commitment does not match its record key`);
  }
  const plain = await aesGcmOpen(recordKey, nonce, blob.slice(45), tag);
  if (plain === null) fail(`record ${seq}: does not decrypt (altered ciphertext or tag)`);
  if (plain.length < 4) fail(`record ${seq}: plaintext too short`);
  const length = new DataView(plain.buffer).getUint32(0);
  const end = 4 + length + 64;
  if (end > plain.length || plain.slice(end).some((b) => b !== 0) || plain.length !== bucket(end)) {
    fail(`record ${seq}: malformed padding`);
  }
  const encoded = plain.slice(4, 4 + length), signature = plain.slice(4 + length, end);
  if (!(await ed25519(provider, signature, encoded))) fail(`record ${seq}: the provider's signature does not verify`);
  const body = decodeBody(encoded, seq);
  if (body.seq !== String(seq)) fail(`record ${seq}: the body says seq ${body.seq}`);
  return {seq, body, hash: hex(await sha256(encoded))};
}

// --- the protocol rules (records/rules.py): findings, in the same words ------------------------------

function bisectLeft(list, x) {
  let lo = 0, hi = list.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (list[mid] < x) lo = mid + 1; else hi = mid; }
  return lo;
}
function bisectRight(list, x) {
  let lo = 0, hi = list.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (x < list[mid]) hi = mid; else lo = mid + 1; }
  return lo;
}
function showWindow(start, end) { return `${start}/${end}`; }

// The time one line (meter, unit, dimensions) has been counted for: disjoint sorted intervals [start, end), and
// the instants of zero-length windows.
class Span {
  constructor() { this.starts = []; this.ends = []; this.points = []; }
  overlap(start, end) {
    const i = (start === end ? bisectRight(this.starts, start) : bisectLeft(this.starts, end)) - 1;
    if (i >= 0 && this.ends[i] > start) return showWindow(this.starts[i], this.ends[i]);
    const j = bisectLeft(this.points, start);
    if (j < this.points.length && (this.points[j] < end || this.points[j] === start)) return this.points[j];
    return null;
  }
  add(start, end) {
    if (start === end) { this.points.splice(bisectRight(this.points, start), 0, start); return; }
    let i = bisectLeft(this.starts, start);
    if (i > 0 && this.ends[i - 1] >= start) i -= 1;
    let j = i;
    while (j < this.starts.length && this.starts[j] <= end) {
      if (this.starts[j] < start) start = this.starts[j];
      if (this.ends[j] > end) end = this.ends[j];
      j += 1;
    }
    this.starts.splice(i, j - i, start);
    this.ends.splice(i, j - i, end);
  }
}

function tallyKey(line) {
  const dims = Object.keys(line.dimensions).sort(byCodePoint).map((k) => [k, line.dimensions[k]]);
  return {meter: line.meter, unit: line.unit, dims};
}
function compareKeys(a, b) {
  const order = byCodePoint(a.meter, b.meter) || byCodePoint(a.unit, b.unit);
  if (order) return order;
  for (let i = 0; i < Math.min(a.dims.length, b.dims.length); i++) {
    const d = byCodePoint(a.dims[i][0], b.dims[i][0]) || byCodePoint(a.dims[i][1], b.dims[i][1]);
    if (d) return d;
  }
  return a.dims.length - b.dims.length;
}
const isUsage = (body) => body.kind === "delta" || body.kind === "correction";

// What the rules need to know of a chain, record by record: add() returns a record's findings and takes it in;
// check() says what add() would return. It starts after prevSeq, whose body hash is head (an evidence bundle
// holds one period).
class Ledger {
  constructor(prevSeq, head) {
    this.prevSeq = prevSeq; this.head = head; this.lastCounted = prevSeq;
    this.closed = new Map(); this.latest = ""; this.runs = new Map(); this.spans = new Map();
  }
  check(record) {
    if (isUsage(record.body)) return this.usage(record.seq, record.body).found;
    if (record.body.kind === "close") return this.closeFindings(record.seq, record.body);
    return [];
  }
  add(record) {
    const {seq, body, hash} = record;
    let findings = [];
    if (body.kind === "genesis") {
      this.lastCounted = seq;
    } else if (isUsage(body)) {
      const usage = this.usage(seq, body);
      findings = usage.found;
      if (!usage.excluded) this.count(record);
    } else {
      findings = this.closeFindings(seq, body);
      if (findings.length === 0) {
        this.closed.set(body.period, seq);
        // Only usage moves the chain on: closing an empty month ahead of time passes no period.
        if (this.runs.delete(body.period) && body.period > this.latest) this.latest = body.period;
        this.lastCounted = seq;
      }
    }
    this.prevSeq = seq; this.head = hash;
    return findings;
  }
  count({seq, body, hash}) {
    let run = this.runs.get(body.period);
    if (run === undefined) { run = {first: seq, count: 0, tally: new Map()}; this.runs.set(body.period, run); }
    run.last = seq; run.count += 1; run.head = hash;
    for (const line of body.lines) {
      const key = tallyKey(line), id = JSON.stringify(key);
      const before = run.tally.get(id);
      run.tally.set(id, {key, quantity: addDecimals(before ? before.quantity : "0", line.quantity)});
    }
    if (body.kind === "delta") {
      for (const line of body.lines) {
        if (line.late === "true") continue;
        const id = lineKey(line);
        if (!this.spans.has(id)) this.spans.set(id, new Span());
        this.spans.get(id).add(body.window.start, body.window.end);
      }
    }
    if (body.period > this.latest) this.latest = body.period;
    this.lastCounted = seq;
  }
  windowConflict(delta) {
    const {start, end} = delta.window;
    for (const line of delta.lines) {
      const span = this.spans.get(lineKey(line));
      const hit = line.late === "true" || span === undefined ? null : span.overlap(start, end);
      if (hit !== null) return `its window ${showWindow(start, end)} counts ${line.meter} again, for time already counted (${hit})`;
    }
    return null;
  }
  usage(seq, delta) {
    const period = delta.period, found = [];
    const flag = (kind, message, fix) => found.push({kind, seq, period, message: `seq ${seq}: ${message}`, fix});
    let excluded = true;
    const run = this.runs.get(period);
    if (this.closed.has(period)) {
      flag("usage_in_closed_period", `usage for ${period}, which seq ${this.closed.get(period)} already closed`,
           `${period} is closed: record a correction in the open period`);
    } else if (this.latest > period) {
      flag("usage_out_of_order", `usage for ${period} after the chain moved on to ${this.latest}`,
           `${period} has passed: record a correction in ${this.latest}`);
    } else if (run !== undefined && run.last !== this.lastCounted) {
      flag("usage_out_of_order", `usage for ${period} after seq ${this.lastCounted}, which is not ${period}'s: ` +
           `${period}'s records would not be one run that a close can cover`,
           `record it in the period that seq ${this.lastCounted} belongs to`);
    } else {
      excluded = false;
    }
    if (delta.kind === "delta") {
      const [start, end] = periodBounds(period);
      if (!(start <= delta.window.start && delta.window.start <= delta.window.end && delta.window.end <= end)) {
        flag("window_outside_period", `its window ${delta.window.start}/${delta.window.end} is not within ${period}`,
             "record usage in the period its window falls in (split a window that spans two)");
      }
      const overlap = this.windowConflict(delta);
      if (overlap !== null) {
        flag("overlapping_window", overlap,
             "record more usage of a window already recorded as a correction naming its delta");
      }
      const negative = [...new Set(delta.lines.filter((l) => l.quantity.startsWith("-")).map((l) => l.meter))].sort(byCodePoint);
      if (negative.length) {
        flag("negative_quantity", `negative quantity of ${negative.join(", ")} outside a correction`,
             "record a decrease as a correction naming the delta it adjusts");
      }
    }
    return {found, excluded};
  }
  expected(period, seq) {
    const run = this.runs.get(period);
    if (run !== undefined) {
      const totals = Array.from(run.tally.values()).sort((a, b) => compareKeys(a.key, b.key)).map((t) => ({
        meter: t.key.meter, unit: t.key.unit, quantity: t.quantity, dimensions: Object.fromEntries(t.key.dims)}));
      for (const t of totals) if (t.quantity.length > 64) return null;
      return {first: run.first, last: run.last, count: run.count, head: run.head, totals};
    }
    // No usage: the close covers nothing, right after the record before it. (rules.py raises RuleBroken here,
    // which the Python verifier reports as a failure, not a finding.)
    if (this.head === null || seq !== this.prevSeq + 1) fail(`a close of ${period} at seq ${seq} cannot be computed here`);
    return {first: seq, last: seq - 1, count: 0, head: this.head, totals: []};
  }
  closeFindings(seq, close) {
    const p = close.period;
    const bad = (message) => [{kind: "bad_close", seq, period: p, message: `seq ${seq}: ${message}`,
                               fix: `let the client compute the close (pacspace close --period ${p})`}];
    if (this.closed.has(p)) return bad(`period ${p} is closed twice (first by seq ${this.closed.get(p)})`);
    const want = this.expected(p, seq);
    if (want === null) return bad(`the totals of ${p} are longer than a close may state: no close can cover them`);
    if (BigInt(close.first_seq) !== BigInt(want.first) || BigInt(close.last_seq) !== BigInt(want.last)) {
      return bad(`close for ${p} covers seq ${close.first_seq}..${close.last_seq}, but the period's records are ` +
                 `seq ${want.first}..${want.last}`);
    }
    if (BigInt(close.record_count) !== BigInt(want.count)) {
      return bad(`close for ${p} counts ${close.record_count} records, the chain has ${want.count}`);
    }
    if (close.chain_head !== want.head) return bad(`close for ${p}: chain_head does not name seq ${want.last}`);
    if (canonical(close.totals) !== canonical(want.totals)) return bad(`close for ${p}: totals differ from the sum of its records`);
    return [];
  }
}
function periodBounds(period) {
  let year = Number(period.slice(0, 4)), month = Number(period.slice(5, 7));
  [year, month] = month === 12 ? [year + 1, 1] : [year, month + 1];
  return [`${period}-01T00:00:00Z`, `${String(year).padStart(4, "0")}-${String(month).padStart(2, "0")}-01T00:00:00Z`];
}

// --- the bundle (client/evidence.py verify_bundle) ------------------------------------------------

function field(obj, key, kind, what, optional) {
  const value = obj[key];
  if ((value === undefined || value === null) && optional) return null;
  if (!(key in obj)) fail(`${what} has no ${key}`);
  const ok = kind === "int" ? Number.isSafeInteger(value) : kind === "list" ? Array.isArray(value) :
    kind === "object" ? value !== null && typeof value === "object" && !Array.isArray(value) : typeof value === kind;
  if (!ok) fail(`${what}: ${key} is not ${kind === "int" ? "a whole number" : kind === "list" ? "a list" : "a " + kind}`);
  return value;
}

async function parseReceipt(text) {
  const split = text.indexOf("\n\n");
  if (split < 0) fail("the close receipt has no checkpoint");
  const lines = text.slice(0, split).split("\n");
  if (lines[0] !== "c2sp.org/tlog-proof@v1") fail("the close receipt is not a c2sp.org/tlog-proof");
  let at = 1, extra = null;
  if (lines[at] && lines[at].startsWith("extra ")) { extra = b64Strict(lines[at].slice(6), "the receipt's entry"); at++; }
  const m = /^index (0|[1-9][0-9]{0,19})$/.exec(lines[at] || "");
  if (!m) fail("the close receipt names no index");
  const path = lines.slice(at + 1).map((h) => b64Strict(h, "a receipt hash", 32));
  return {index: BigInt(m[1]), extra, path, checkpoint: text.slice(split + 2)};
}

function fingerprint(digest) { return hex(digest).match(/.{4}/g).join(":"); }

async function verifyBundle(bundle, vkeyText, progress) {
  const step = progress || (() => {});
  const what = "the evidence bundle";
  if (bundle === null || typeof bundle !== "object" || Array.isArray(bundle)) fail(`${what} is not a JSON object`);
  if (bundle.format !== FORMAT) fail(`this is not a ${FORMAT} bundle (pacspace evidence export writes one)`);
  const key = await parseVkey(vkeyText);
  const rid = field(bundle, "relationship", "string", what), period = field(bundle, "period", "string", what);
  const providerEd = b64(field(bundle, "provider_ed25519", "string", what), "provider_ed25519", 32);
  const providerX = b64(field(bundle, "provider_x25519", "string", what), "provider_x25519", 32);
  const prevOfFirst = field(bundle, "prev_of_first", "string", what, true);
  const notes = field(bundle, "checkpoints", "object", what);
  const receiptText = field(bundle, "close_receipt", "string", what);
  const items = field(bundle, "records", "list", what);
  if (items.length === 0) fail(`${what} holds no records`);
  const checkpoints = new Map();
  for (const [size, note] of Object.entries(notes)) {
    if (!/^[0-9]+$/.test(size) || typeof note !== "string") fail(`${what}: checkpoints maps tree sizes to signed notes`);
    checkpoints.set(Number(size), await openCheckpoint(note, key));
  }
  step(`${checkpoints.size} checkpoint(s) signed by the log key, each with the log's signed time`);
  const opened = [];
  for (let n = 0; n < items.length; n++) {
    opened.push(await verifyItem(items[n], n, checkpoints, providerEd, rid, prevOfFirst, opened));
  }
  step(`${opened.length} records: each in the log (inclusion proof to a signed root; its tag and ciphertext hash are ` +
       `the logged entry), each opened with its own key (key commitment, AES-256-GCM with the tag as associated ` +
       `data, padding), each signed by the provider, each naming the one before it (seq and prev)`);
  const close = opened[opened.length - 1].body;
  if (close.kind !== "close" || close.period !== period) fail("the bundle does not end with the period's close record");
  const ledger = new Ledger(opened[0].seq - 1, prevOfFirst);
  const findings = opened.slice(0, -1).flatMap((r) => ledger.add(r));
  const broken = ledger.check(opened[opened.length - 1]);
  if (broken.length) fail(broken[0].message);
  step(`the close covers exactly the period's records, and its totals are their sum (exact decimals)`);
  if (findings.length === 0) step("every record follows the protocol rules (records/rules.py)");
  const last = items[items.length - 1];
  const receipt = await parseReceipt(receiptText);
  const receiptCheckpoint = await openCheckpoint(receipt.checkpoint, key);
  const closeEntry = await publicEntry(b64(last.tag, "tag"), b64(last.ciphertext, "ciphertext"));
  if (receipt.extra === null || !equal(receipt.extra, closeEntry) || receipt.index !== BigInt(last.index)) {
    fail("the close receipt is not for the close record");
  }
  await verifyInclusion(receipt.index, receiptCheckpoint.size, await leafHash(closeEntry), receipt.path,
                        receiptCheckpoint.root, "the close receipt");
  step("the close receipt (what the invoice cites) proves the close record in the log");
  const provider = fingerprint(await sha256(concat(enc.encode(PARTY_KEYS), providerX, providerEd)));
  const signed = checkpoints.get(last.checkpoint_size).timestamp;
  return {relationship: rid, period, records: Number(close.record_count), totals: close.totals,
          providerFingerprint: provider, closedAt: new Date(Number(signed) * 1000).toISOString(),
          logKey: key.vkey, findings};
}

async function verifyItem(item, n, checkpoints, provider, rid, prevOfFirst, opened) {
  const where = `the bundle's record ${n}`;
  if (item === null || typeof item !== "object") fail(`${where} is not an object`);
  const seq = field(item, "seq", "int", where), index = field(item, "index", "int", where);
  const tag = b64(field(item, "tag", "string", where), `${where}'s tag`, 32);
  const blob = b64(field(item, "ciphertext", "string", where), `${where}'s ciphertext`);
  const recordKey = b64(field(item, "record_key", "string", where), `${where}'s record key`, 32);
  const path = field(item, "proof", "list", where).map((h) => b64(h, `${where}'s proof`, 32));
  const checkpoint = checkpoints.get(field(item, "checkpoint_size", "int", where));
  if (checkpoint === undefined) fail(`${where}: its checkpoint_size names no checkpoint of the bundle`);
  if (seq < 0 || index < 0 || BigInt(index) >= checkpoint.size) fail(`${where}: seq ${seq} at index ${index} is not in the tree`);
  const entry = await publicEntry(tag, blob);
  await verifyInclusion(index, checkpoint.size, await leafHash(entry), path, checkpoint.root, `record ${seq}`);
  const record = await openRecord(seq, tag, blob, recordKey, provider);
  if (record.body.relationship !== rid) fail(`seq ${seq} belongs to another relationship`);
  const expectedPrev = opened.length === 0 ? prevOfFirst : opened[opened.length - 1].hash;
  if (expectedPrev !== null && record.body.prev !== expectedPrev) fail(`seq ${seq} does not follow the record before it`);
  if (opened.length > 0 && seq !== opened[opened.length - 1].seq + 1) fail(`seq ${seq} follows seq ${opened[opened.length - 1].seq}: a gap`);
  return record;
}

// --- the page ---------------------------------------------------------------------------------------

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function check(text, pasted) {
  let bundle;
  try {
    bundle = JSON.parse(text);
  } catch (e) {
    fail("the file is not JSON: choose the evidence bundle (pacspace evidence export)");
  }
  const inBundle = bundle !== null && typeof bundle === "object" && typeof bundle.log_vkey === "string" ? bundle.log_vkey : "";
  const source = pasted.trim() ? "pasted" : inBundle ? "bundle" : "none";
  if (source === "none") fail("the bundle names no log key: paste the log's vkey (its operator publishes it)");
  const steps = [];
  const result = await verifyBundle(bundle, source === "pasted" ? pasted : inBundle, (s) => steps.push(s));
  return {...result, keySource: source, steps, bundleKey: inBundle};
}

async function run() {
  const file = document.getElementById("bundle").files[0];
  if (!file) return;
  const verdict = document.getElementById("verdict");
  const pasted = document.getElementById("vkey").value;
  verdict.setAttribute("data-verdict", "running");
  verdict.removeAttribute("data-findings");
  verdict.textContent = "Checking…";
  document.getElementById("reason").textContent = "";
  for (const id of ["key-source", "summary", "steps", "findings"]) document.getElementById(id).replaceChildren();
  document.getElementById("totals").hidden = true;
  document.getElementById("findings").hidden = true;
  try {
    const result = await check(await file.text(), pasted);
    show(result);
  } catch (e) {
    verdict.setAttribute("data-verdict", "failed");
    const reason = e instanceof Failed ? e.message : `the bundle could not be checked (${e && e.name ? e.name : e})`;
    verdict.textContent = "Failed: this bundle does not prove what it claims.";
    document.getElementById("reason").textContent = "Why: " + reason;
  }
}

function plural(n, noun) { return `${n} ${noun}${n === 1 ? "" : "s"}`; }

function show(result) {
  const verdict = document.getElementById("verdict");
  const found = result.findings;
  if (found.length === 0) {
    verdict.setAttribute("data-verdict", "ok");
    verdict.textContent = `Verified: ${result.relationship}, ${result.period}, ${result.records} usage records, closed ` +
                          `in a checkpoint the log signed at ${result.closedAt}.`;
  } else {
    // Authentic and in the log, but the provider broke a protocol rule: no "Verified" (`pacspace evidence verify`
    // exits 7 and lists the findings).
    verdict.setAttribute("data-verdict", "failed");
    verdict.setAttribute("data-findings", String(found.length));
    verdict.textContent = `Failed: the provider broke ${plural(found.length, "protocol rule")} in ${result.period}: ` +
                          "see the findings.";
    document.getElementById("reason").textContent = "Why: the provider broke a protocol rule: " +
      `${found[0].message} (${found[0].kind})` + (found.length > 1 ? `, and ${found.length - 1} more below` : "") +
      ". The records are authentic and in the log: they are the customer's evidence of it.";
    const list = document.getElementById("findings");
    for (const f of found) {
      const item = el("li", undefined, {"data-kind": f.kind, "data-seq": String(f.seq)});
      item.append(el("b", f.kind), ` (seq ${f.seq}): ${f.message}. `, el("i", f.fix));
      list.append(item);
    }
    list.hidden = false;
  }
  const source = document.getElementById("key-source");
  source.setAttribute("data-source", result.keySource);
  source.textContent = result.keySource === "pasted"
    ? `Checked against the log key you entered: ${result.logKey}` +
      (result.bundleKey && result.bundleKey !== result.logKey ? " (the bundle names another key, unused)." : ".")
    : `Checked against the log key inside the bundle (${result.logKey}). That shows the bundle agrees with itself; to ` +
      "know it is the log you trust, paste the log's key, published by its operator, and check again.";
  const summary = document.getElementById("summary");
  summary.append(el("p", `Provider key fingerprint: ${result.providerFingerprint} (compare it with the one your ` +
                        "customer gave you).", {id: "provider-fingerprint"}));
  const steps = document.getElementById("steps");
  for (const s of result.steps) steps.append(el("li", "\u2713 " + s));
  const table = document.getElementById("totals");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const t of result.totals) {
    const row = el("tr");
    const dims = Object.keys(t.dimensions).sort(byCodePoint).map((k) => `${k}=${t.dimensions[k]}`).join(", ");
    row.append(el("td", t.meter), el("td", dims), el("td", t.quantity, {class: "n"}), el("td", t.unit));
    body.append(row);
  }
  table.hidden = false;
}

window.pacspaceVerifier = {check, verifyBundle, addDecimals, canonical};
document.getElementById("bundle").addEventListener("change", run);
document.getElementById("check").addEventListener("click", run);
