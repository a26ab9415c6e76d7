-- Keep-alive GET with a precomputed Proxy-Authorization per request.
-- Arguments after `--`: the request target, the Host header value, a file prefix.
-- Thread i reads PREFIX.i: line 1 is every Digest field but nc and response, line k+1
-- the response for nc=k (each thread has its own nonce, so counts arriving out of order
-- over its connections stay well inside proxyd's 1024-count replay window).
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

function init(args)
   local file = assert(io.open(args[3] .. "." .. tid, "r"))
   local fixed = file:read("*l")
   responses = {}
   for line in file:lines() do
      responses[#responses + 1] = line
   end
   file:close()
   head = "GET " .. args[1] .. " HTTP/1.1\r\nHost: " .. args[2]
      .. "\r\nProxy-Authorization: " .. fixed .. ", nc="
   nc = 0
   exhausted = false
end

function request()
   nc = nc + 1
   local response = responses[nc]
   if response == nil then
      -- Out of precomputed values: replays on purpose. The proxy must refuse them
      -- (non-2xx) and the run is reported as exhausted, never as a valid figure.
      exhausted = true
      nc = 1
      response = responses[1]
   end
   return head .. string.format("%08x", nc) .. ', response="' .. response .. '"\r\n\r\n'
end

function done(summary, latency, requests)
   local e = summary.errors
   local any_exhausted = false
   for _, thread in ipairs(threads) do
      any_exhausted = any_exhausted or thread:get("exhausted")
   end
   io.write(string.format(
      'BENCH-RESULT {"requests": %d, "duration_us": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "non_2xx_3xx": %d, '
      .. '"p50_us": %d, "p99_us": %d, "exhausted": %s}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      e.status, latency:percentile(50), latency:percentile(99), tostring(any_exhausted)))
end
