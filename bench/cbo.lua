-- wrk script for the CBO API benchmark (bench/cbo). WORKLOAD (set by the runner through
-- `wrk ... -- WORKLOAD IDS_FILE`, IDS_FILE from bench/cbo-seed.py) is one of: list, read, act, mixed.
--   list:  GET /cbo/v1/referrals?limit=50 for a random organisation
--   read:  GET /cbo/v1/referrals/{id} for a random referral of its organisation
--   act:   POST .../accept, each referral once, in order (durable Task updates)
--   mixed: 90% read, 10% POST .../notes
local workload, next_act = "read", 0
local ids, orgs = {}, {}

function init(args)
    workload = args[1]
    local seen = {}
    for line in io.lines(args[2]) do
        local org, id = line:match("^(%S+) (%S+)$")
        ids[#ids + 1] = { org, id }
        if not seen[org] then
            seen[org] = true
            orgs[#orgs + 1] = org
        end
    end
    math.randomseed(os.time())
end

local function org_header(org)
    return { ["X-Crossway-Organization"] = org, ["Content-Type"] = "application/json" }
end

function request()
    if workload == "list" then
        local org = orgs[math.random(#orgs)]
        return wrk.format("GET", "/cbo/v1/referrals?limit=50", org_header(org))
    end
    if workload == "act" then
        next_act = next_act + 1
        local r = ids[(next_act - 1) % #ids + 1]
        return wrk.format("POST", "/cbo/v1/referrals/" .. r[2] .. "/accept", org_header(r[1]), "{}")
    end
    local r = ids[math.random(#ids)]
    if workload == "mixed" and math.random(10) == 1 then
        return wrk.format("POST", "/cbo/v1/referrals/" .. r[2] .. "/notes", org_header(r[1]),
            '{"text": "Called the client; left a message."}')
    end
    return wrk.format("GET", "/cbo/v1/referrals/" .. r[2], org_header(r[1]))
end
