-- wrk script: single-job enqueues, the body conveyor bench --http-jobs sends (about 100 bytes of
-- payload, keys spread over 1,000 values).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = '{"type":"noop","key":"user-' .. (n % 1000) .. '","payload":{"n":' .. n .. ',"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
  return wrk.format(nil, nil, nil, body)
end
