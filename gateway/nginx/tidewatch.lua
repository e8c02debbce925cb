-- tidewatch's emitter for nginx and OpenResty (lua-nginx-module).
--
-- The gateway measures, a queue carries, a scaler decides: every request
-- adds its latency, and maybe an error, to its target's current second in
-- a Lua table of its worker (no lock and no shared memory on the request
-- path); a timer in each worker publishes one `gateway_latency` message
-- per target per second: `samples_ms` (at most `max_samples`, a
-- reservoir sample of the second's requests above that), `requests` (all
-- of them) and `errors`. A target gets one message per worker a second.
--
--   lua_shared_dict tidewatch 1m;     # optional: counts published messages
--   init_worker_by_lua_block {
--     require("tidewatch").init({ sender = "rabbitmq", rabbitmq = { ... } })
--   }
--   server {
--     set $tidewatch_target checkout;          # or leave it: the Host
--     log_by_lua_block { require("tidewatch").log() }
--   }
--
-- Senders: "rabbitmq" (the management plugin's HTTP publish API, one
-- message per call, from a cosocket) and "kafka" (lua-resty-kafka; Debian
-- packages it as lua-nginx-kafka). docs/gateways.md has both recipes.

local cjson = require "cjson.safe"

local M = {}

local defaults = {
  dict = "tidewatch",
  -- seconds a message covers
  interval = 1,
  -- samples per target per interval, at most
  max_samples = 1000,
  -- "upstream": $upstream_response_time (summed over retries and
  -- redirects; requests without an upstream add no sample), or "total":
  -- $request_time
  latency = "upstream",
  -- the nginx variable that names the target; unset or empty: $host
  target_var = "tidewatch_target",
  -- a status at or above this is an error
  error_status = 500,
  sender = "rabbitmq",
  rabbitmq = {
    host = "127.0.0.1",
    port = 15672,
    user = "guest",
    password = "guest",
    vhost = "/",
    exchange = "tidewatch.signals",
    timeout_ms = 2000,
  },
  kafka = {
    brokers = { { host = "127.0.0.1", port = 9092 } },
    topic = "tidewatch.signals",
  },
}

local cfg
local dict

local function merge(into, from)
  for k, v in pairs(from or {}) do
    if type(v) == "table" and type(into[k]) == "table" and #v == 0 then
      merge(into[k], v)
    else
      into[k] = v
    end
  end
  return into
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do
    out[k] = type(v) == "table" and copy(v) or v
  end
  return out
end

-- seconds, possibly "0.010, 0.020" (retries) or "0.010 : 0.020"
-- (redirects): summed; "-" parts are none
local function seconds(text)
  if not text then
    return nil
  end
  -- one upstream, the common case: no pattern matching
  local v = tonumber(text)
  if v then
    return v
  end
  if text == "" or text == "-" then
    return nil
  end
  local sum, any = 0, false
  for part in string.gmatch(text, "[^,:%s]+") do
    local v = tonumber(part)
    if v then
      sum = sum + v
      any = true
    end
  end
  return any and sum or nil
end

-- Each worker aggregates its own requests in plain Lua tables (no lock,
-- no shared memory on the request path) and publishes them itself: a
-- target gets one message per worker per interval.
local current = {}          -- target -> { n, e, s, samples }
local current_bucket
local finished = {}         -- bucket -> the `current` of that interval

local floor, random = math.floor, math.random

local function rotate(bucket)
  if current_bucket and current_bucket ~= bucket then
    finished[current_bucket] = current
    current = {}
  end
  current_bucket = bucket
end

-- the log phase: one request into its target's current interval
function M.log()
  if not cfg then
    return
  end
  local var = ngx.var
  local target = var[cfg.target_var]
  if not target or target == "" then
    target = var.host
    if not target or target == "" then
      return
    end
  end
  rotate(floor(ngx.now() / cfg.interval))
  local t = current[target]
  if not t then
    t = { n = 0, e = 0, s = 0, samples = {} }
    current[target] = t
  end
  t.n = t.n + 1
  if ngx.status >= cfg.error_status then
    t.e = t.e + 1
  end
  local s
  if cfg.latency == "total" then
    s = tonumber(var.request_time)
  else
    s = seconds(var.upstream_response_time)
  end
  if not s then
    return
  end
  local n = t.s + 1
  t.s = n
  if n <= cfg.max_samples then
    t.samples[n] = s * 1000
  else
    -- a reservoir sample: each of the n requests is kept with max/n
    local j = random(1, n)
    if j <= cfg.max_samples then
      t.samples[j] = s * 1000
    end
  end
end

-- the messages of one finished interval
local function messages(bucket, targets)
  local out = {}
  for target, t in pairs(targets) do
    out[#out + 1] = {
      target = target,
      body = cjson.encode({
        type = "gateway_latency",
        target = target,
        samples_ms = setmetatable(t.samples, cjson.array_mt),
        requests = t.n,
        errors = t.e,
        -- the end of the interval, in ms
        ts = floor(((bucket + 1) * cfg.interval) * 1000) - 1,
      }),
    }
  end
  return out
end

local b64 = ngx.encode_base64

-- the RabbitMQ management plugin's publish API, over a cosocket
local function rabbitmq_send(msgs)
  local r = cfg.rabbitmq
  local sock = ngx.socket.tcp()
  sock:settimeout(r.timeout_ms)
  local ok, err = sock:connect(r.host, r.port)
  if not ok then
    return nil, "connect " .. r.host .. ":" .. r.port .. ": " .. tostring(err)
  end
  local path = "/api/exchanges/" .. ngx.escape_uri(r.vhost) .. "/" .. ngx.escape_uri(r.exchange) .. "/publish"
  local auth = "Basic " .. b64(r.user .. ":" .. r.password)
  local sent = 0
  for _, m in ipairs(msgs) do
    local body = cjson.encode({
      properties = { content_type = "application/json", delivery_mode = 2 },
      routing_key = "gateway_latency." .. m.target,
      payload = m.body,
      payload_encoding = "string",
    })
    local req = "POST " .. path .. " HTTP/1.1\r\nHost: " .. r.host .. "\r\nAuthorization: " .. auth
      .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
    local _, serr = sock:send(req)
    if serr then
      sock:close()
      return sent, "send: " .. serr
    end
    local line, rerr = sock:receive("*l")
    if not line then
      sock:close()
      return sent, "receive: " .. tostring(rerr)
    end
    local status = tonumber(string.match(line, "^HTTP/%d%.%d (%d+)"))
    local length = 0
    while true do
      local h = sock:receive("*l")
      if not h or h == "" then
        break
      end
      local v = string.match(string.lower(h), "^content%-length:%s*(%d+)")
      if v then
        length = tonumber(v)
      end
    end
    local reply = length > 0 and sock:receive(length) or ""
    if status ~= 200 then
      sock:close()
      return sent, "HTTP " .. tostring(status) .. ": " .. tostring(reply)
    end
    -- {"routed": false}: no queue bound for this routing key
    sent = sent + 1
  end
  sock:setkeepalive(10000, 4)
  return sent
end

local kafka_producer

local function kafka_send(msgs)
  if not kafka_producer then
    local producer = require "nginx.kafka.producer"
    kafka_producer = producer:new(cfg.kafka.brokers, { producer_type = "sync" })
  end
  local sent = 0
  for _, m in ipairs(msgs) do
    local ok, err = kafka_producer:send(cfg.kafka.topic, m.target, m.body)
    if not ok then
      return sent, err
    end
    sent = sent + 1
  end
  return sent
end

local function publish(premature)
  if premature then
    return
  end
  rotate(floor(ngx.now() / cfg.interval))
  local done = finished
  finished = {}
  for bucket, targets in pairs(done) do
    local msgs = messages(bucket, targets)
    if #msgs > 0 then
      local send = cfg.sender == "kafka" and kafka_send or rabbitmq_send
      local sent, err = send(msgs)
      if err then
        ngx.log(ngx.ERR, "tidewatch: ", #msgs - (sent or 0), " of ", #msgs, " messages not published: ", err)
      end
      if dict then
        dict:incr("published", sent or 0, 0)
      end
    end
  end
end

function M.init(opts)
  cfg = merge(copy(defaults), opts)
  -- only for the count of published messages (optional)
  dict = ngx.shared[cfg.dict]
  local ok, err = ngx.timer.every(cfg.interval, publish)
  if not ok then
    ngx.log(ngx.ERR, "tidewatch: cannot start the publishing timer: ", err)
  end
end

-- how many messages were published (for a status location)
function M.published()
  return dict and dict:get("published") or 0
end

return M
