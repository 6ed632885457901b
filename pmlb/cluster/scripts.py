"""The Lua scripts the bus runs in Redis, and the keys they use.

Each is one Redis call: a flush carries every directory change and every
cross-node reply queued since the last one; a heartbeat refreshes this node's
TTL, lists the live nodes and reaps the dead ones. A script runs atomically,
so a dead node is reaped by exactly one survivor: the first heartbeat that
sees its key expired removes it from the node set, and no later one sees it.

Keys (``pmlb:`` prefix): ``dir`` (hash uuid -> node), ``clients:NODE`` (set
of that node's uuids), ``node:NODE`` (its heartbeat: JSON, expires after
``node_timeout``), ``nodes`` (set of every node not yet reaped). Channels:
``to:NODE`` (one per node) and ``all`` (broadcasts). The scripts touch keys
they are not passed in KEYS (the other nodes'): fine on one Redis, not on a
Redis Cluster.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "pmlb:"
DIRECTORY: Final = PREFIX + "dir"
NODES: Final = PREFIX + "nodes"
BROADCAST_CHANNEL: Final = PREFIX + "all"


def clients_key(node: str) -> str:
    return f"{PREFIX}clients:{node}"


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def node_channel(node: str) -> str:
    return f"{PREFIX}to:{node}"


_CHUNKED: Final = """
local function chunked(command, key, list, extra)
  for first = 1, #list, 1000 do
    local last = math.min(first + 999, #list)
    local args = {}
    for j = first, last do
      args[#args + 1] = list[j]
      if extra then args[#args + 1] = extra end
    end
    redis.call(command, key, unpack(args))
  end
end
local function forget(node, dir, set)
  local mine = redis.call('SMEMBERS', set)
  local gone = {}
  for _, uuid in ipairs(mine) do
    if redis.call('HGET', dir, uuid) == node then gone[#gone + 1] = uuid end
  end
  chunked('HDEL', dir, gone)
  redis.call('DEL', set)
  return gone
end
"""

#: KEYS: dir, clients:NODE. ARGV: node, header, channel prefix, broadcast
#: channel, reset ("1": forget this node's entries first), then sections, each
#: a count followed by its items: uuids added, uuids removed, broadcast
#: records, lookups (record, count of uuids, uuids), and messages (mode,
#: target, message: mode "u" publishes to the node holding uuid target, "n"
#: to node target, "a" to every node). Returns {unknown uuids, records
#: published, records no node was subscribed for, for each message: the node
#: it reached ("u" and "n"; "" if none) or the number of nodes ("a")}.
FLUSH: Final = (
    _CHUNKED
    + """
local node, header, to, all = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[5] == '1' then forget(node, KEYS[1], KEYS[2]) end
local i = 6
local function section()
  local n = tonumber(ARGV[i])
  local items = {}
  for j = i + 1, i + n do items[#items + 1] = ARGV[j] end
  i = i + n + 1
  return items
end
local added = section()
if #added > 0 then
  chunked('HSET', KEYS[1], added, node)
  chunked('SADD', KEYS[2], added)
end
local removed = section()
if #removed > 0 then
  chunked('HDEL', KEYS[1], removed)
  chunked('SREM', KEYS[2], removed)
end
local sent, dropped, unknown = 0, 0, 0
local broadcasts = section()
if #broadcasts > 0 then
  redis.call('PUBLISH', all, header .. table.concat(broadcasts))
  sent = sent + #broadcasts
end
local items = tonumber(ARGV[i])
i = i + 1
local out, order = {}, {}
for _ = 1, items do
  local record, n = ARGV[i], tonumber(ARGV[i + 1])
  local owners = redis.call('HMGET', KEYS[1], unpack(ARGV, i + 2, i + 1 + n))
  i = i + 2 + n
  local seen = {}
  for _, owner in ipairs(owners) do
    if owner and owner ~= node then
      if not seen[owner] then
        seen[owner] = true
        if not out[owner] then out[owner] = {}; order[#order + 1] = owner end
        local list = out[owner]
        list[#list + 1] = record
      end
    else
      unknown = unknown + 1
    end
  end
end
for _, owner in ipairs(order) do
  local records = out[owner]
  local receivers = redis.call('PUBLISH', to .. owner, header .. table.concat(records))
  sent = sent + #records
  if receivers == 0 then dropped = dropped + #records end
end
local reached = {}
local messages = tonumber(ARGV[i] or '0')
i = i + 1
for _ = 1, messages do
  local mode, target, message = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if mode == 'a' then
    reached[#reached + 1] = tostring(redis.call('PUBLISH', all, message))
  else
    local owner = target
    if mode == 'u' then owner = redis.call('HGET', KEYS[1], target) end
    if owner and owner ~= node and redis.call('PUBLISH', to .. owner, message) > 0 then
      reached[#reached + 1] = owner
    else
      reached[#reached + 1] = ''
    end
  end
end
return {unknown, sent, dropped, reached}
"""
)

#: KEYS: node:NODE, nodes, dir. ARGV: node, info (JSON), ttl in ms, key
#: prefix. Returns {1 if this node's key had expired or never existed (it
#: must register its clients again), clients in the directory, the live
#: nodes (a flat list of name, heartbeat JSON...), reaped: a flat list of
#: node, count, uuids...}.
HEARTBEAT: Final = (
    _CHUNKED
    + """
local node, prefix = ARGV[1], ARGV[4]
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
redis.call('SADD', KEYS[2], node)
local live, reaped = {}, {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local info = redis.call('GET', prefix .. 'node:' .. name)
  if info then
    live[#live + 1] = name
    live[#live + 1] = info
  else
    local gone = forget(name, KEYS[3], prefix .. 'clients:' .. name)
    redis.call('SREM', KEYS[2], name)
    reaped[#reaped + 1] = name
    reaped[#reaped + 1] = #gone
    for _, uuid in ipairs(gone) do reaped[#reaped + 1] = uuid end
  end
end
return {old and 0 or 1, redis.call('HLEN', KEYS[3]), live, reaped}
"""
)

#: KEYS: node:NODE, nodes, dir, clients:NODE. ARGV: node. A node leaving on
#: purpose: its entries, heartbeat and membership go at once.
LEAVE: Final = (
    _CHUNKED
    + """
forget(ARGV[1], KEYS[3], KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""
)
