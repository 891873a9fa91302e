-- wrk script for tools/bench_records.py's single-record phase (run by the benchmark, not by hand).
--
-- Each wrk thread reads "<prefix><thread id>": one line per sealed record, "rid<TAB>leaf_hash<TAB>body",
-- every relationship's records in seq order. A relationship is handed out again only after the
-- receipt for its previous record came back (matched by the leaf hash in the receipt), so seqs
-- never race; with many more relationships than connections there is always one ready.

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  token = args[1]
  local path = args[2] .. id
  queues, owner, ready = {}, {}, {}
  local order = {}
  for line in io.lines(path) do
    local rid, leaf, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
    if queues[rid] == nil then
      queues[rid] = {}
      table.insert(order, rid)
    end
    table.insert(queues[rid], body)
    owner[leaf] = rid
  end
  for _, rid in ipairs(order) do table.insert(ready, rid) end
  head, tail = 1, #ready
  pos = {}
  failures, exhausted = 0, 0
  headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
end

function request()
  if head > tail then
    exhausted = exhausted + 1
    return wrk.format("GET", "/health")
  end
  local rid = ready[head]
  ready[head] = nil
  head = head + 1
  local k = (pos[rid] or 0) + 1
  pos[rid] = k
  return wrk.format("POST", "/v1/relationships/" .. rid .. "/records", headers, queues[rid][k])
end

function response(status, hdrs, body)
  local leaf = body:match('"leaf_hash": ?"([^"]+)"')
  local rid = leaf and owner[leaf]
  if rid == nil then
    if status ~= 200 then failures = failures + 1 end
    return
  end
  if status ~= 201 then failures = failures + 1 end
  if pos[rid] < #queues[rid] then
    tail = tail + 1
    ready[tail] = rid
  end
end

function done(summary, latency, requests)
  local failed, dry = 0, 0
  for _, t in ipairs(threads) do
    failed = failed + t:get("failures")
    dry = dry + t:get("exhausted")
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, ' ..
    '"failures": %d, "exhausted": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, failed, dry,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
