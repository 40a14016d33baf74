-- wrk script: POST the Gravity referral transaction (each request creates new resources).
-- With NEW_PATIENT=1 each request's Patient gets an MRN of its own (a referral per
-- person, as an EHR sends them); otherwise every request names the same MRN, so all
-- referrals land on one person and every batch contends for that person's identity.
local f = io.open(os.getenv("BUNDLE") or "tests/fixtures/referral-transaction.json", "r")
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")

if os.getenv("NEW_PATIENT") == "1" then
    local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
    local n = 0
    request = function()
        n = n + 1
        local b = body:gsub('"MRN%-(%d+)"', '"MRN-%1-' .. run .. '-' .. n .. '"')
        return wrk.format(nil, nil, nil, b)
    end
end
