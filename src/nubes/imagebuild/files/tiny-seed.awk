# nubes tiny guest: read the NoCloud seed (meta-data, user-data, network-config) and write what
# /init needs under OUT (-v OUT=dir), one value per file or line, so /init never evals seed text.
# It understands the block-style YAML nubes writes (one value per line), not YAML in general.

function unq(s) {
    sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
    if (s ~ /^'.*'$/) { s = substr(s, 2, length(s) - 2); gsub(/''/, "'", s) }
    else if (s ~ /^".*"$/) { s = substr(s, 2, length(s) - 2) }
    return s
}
function path(upto,   p, j) {
    p = ""
    for (j = 0; j <= upto; j++) if (j in key) p = (p == "" ? key[j] : p "." key[j])
    return p
}
function add(list, v) { return list == "" ? v : list "," v }
function addkey(k) { if (!(k in seen)) { seen[k] = 1; keys[nkeys++] = k } }

# one flattened "a.b.c" = value pair of file f
function handle(f, p, v,   parts, n) {
    if (f == "meta-data") {
        if (p == "instance-id") iid = v
        else if (p == "local-hostname") mhost = v
        else if (p ~ /^public-keys/) addkey(v)
    } else if (f == "user-data") {
        if (p == "hostname") uhost = v
        else if (p ~ /(^|\.)ssh_authorized_keys$/) addkey(v)
    } else if (f == "network-config" && p ~ /^ethernets\./) {
        n = split(p, parts, ".")
        name = parts[2]
        if (!(name in mac)) { nics[nnics++] = name; mac[name] = "" }
        sub(/^ethernets\.[^.]*\./, "", p)
        if (p == "match.macaddress") mac[name] = tolower(v)
        else if (p == "set-name") setname[name] = v
        else if (p == "mtu") mtu[name] = v
        else if (p == "addresses") addrs[name] = add(addrs[name], v)
        else if (p == "routes.to") rto = v
        else if (p == "routes.via") routes[name] = add(routes[name], rto ">" v)
        else if (p == "gateway4") routes[name] = add(routes[name], "0.0.0.0/0>" v)
        else if (p == "nameservers.addresses") dns[name] = add(dns[name], v)
    }
}

FNR == 1 {
    file = FILENAME; sub(/.*\//, "", file)
    for (j in key) delete key[j]
    if (file == "user-data") {
        if ($0 ~ /^#cloud-config/) udkind = "cloud-config"
        else if ($0 ~ /^#!/) udkind = "script"
        else udkind = "other"
    }
}
file == "user-data" && udkind != "cloud-config" { next }
/^[ \t]*(#|$)/ { next }
{
    line = $0
    match(line, /^ */); ind = RLENGTH; line = substr(line, ind + 1)
    if (line ~ /^- /) {
        line = substr(line, 3)
        if (line !~ /^[A-Za-z0-9_.-]+:( |$)/) { handle(file, path(ind), unq(line)); next }
        ind += 2
    }
    if (match(line, /^[A-Za-z0-9_.-]+:( |$)/)) {
        k = substr(line, 1, RLENGTH); sub(/:( )?$/, "", k)
        v = substr(line, RLENGTH + 1)
        for (j in key) if (j + 0 >= ind) delete key[j]
        key[ind] = k
        if (v != "" && v !~ /^[|>]/) handle(file, path(ind), unq(v))
    }
}

function dash(s) { return s == "" ? "-" : s }
END {
    host = uhost != "" ? uhost : mhost  # cloud-config wins, as with cloud-init
    printf "%s\n", host > (OUT "/hostname")
    printf "%s\n", iid > (OUT "/instance-id")
    printf "%s\n", (udkind == "" ? "none" : udkind) > (OUT "/user-data-kind")
    printf "" > (OUT "/keys")
    for (i = 0; i < nkeys; i++) print keys[i] > (OUT "/keys")
    # one NIC per line: config-name mac set-name mtu addresses routes(to>via) dns
    printf "" > (OUT "/nics")
    for (i = 0; i < nnics; i++) {
        n = nics[i]
        if (mac[n] == "") continue
        print n, mac[n], dash(setname[n]), dash(mtu[n]), dash(addrs[n]), dash(routes[n]), \
            dash(dns[n]) > (OUT "/nics")
    }
}
