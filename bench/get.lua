-- Keep-alive GET through a proxy (absolute-form target) or direct (origin-form).
-- Arguments after `--`: the request target, the Host header value.
function init(args)
   wrk.path = args[1]
   wrk.headers["Host"] = args[2]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH-RESULT {"requests": %d, "duration_us": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "non_2xx_3xx": %d, '
      .. '"p50_us": %d, "p99_us": %d, "exhausted": false}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      e.status, latency:percentile(50), latency:percentile(99)))
end
