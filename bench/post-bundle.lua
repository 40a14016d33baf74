-- wrk script: POST the Gravity referral transaction (each request creates new resources).
local f = io.open(os.getenv("BUNDLE") or "tests/fixtures/referral-transaction.json", "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
