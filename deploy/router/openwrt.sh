#!/bin/sh
# Force a school's DNS through schooldns on an OpenWrt router (22.03 or later: firewall4, nftables).
# Copy it to the router (scp openwrt.sh root@192.168.1.1:/tmp/) and run it there:
#
#   SCHOOLDNS=192.0.2.53 sh /tmp/openwrt.sh
#
# SCHOOLDNS   the address of the schooldns server (IPv4 or IPv6)
# LAN         optional: the pupils' side of the router (default br-lan, OpenWrt's lan bridge)
#
# (`sh openwrt.sh --print` with the same variables prints the firewall rules and changes nothing.)
#
# What it does:
#   - the router's own DNS (dnsmasq, which DHCP already hands to the devices) forwards to
#     schooldns only (`server=SCHOOLDNS`, `noresolv`: not to the provider's resolvers);
#   - every DNS query from the pupils' side to any other address (port 53, UDP and TCP, IPv4 and
#     IPv6) is answered by the router's dnsmasq instead (redirect), so by schooldns;
#   - DNS over TLS or QUIC (port 853) and the public resolvers that serve DNS over HTTPS
#     (deploy/router/doh-addresses.txt) are refused;
#   - a schooldns server on the pupils' side keeps its own way to its upstreams.
# The rules are /etc/nftables.d/50-schooldns.nft, which firewall4 loads with its own; run the
# script again after a change. To undo: remove that file, `uci del_list dhcp.@dnsmasq[0].server=...`,
# `uci set dhcp.@dnsmasq[0].noresolv=0`, `uci commit dhcp`, then restart dnsmasq and the firewall.
#
# In schooldns, the school's policy file must name the address schooldns sees: the router's public
# address if schooldns is outside the school, its LAN address if schooldns is on the pupils' side.
# `schooldns explain --client ADDRESS NAME` on the server shows which school an address belongs to.
#
# Check from a pupil's device (dig: Debian/Ubuntu bind9-dnsutils, macOS has it, Windows: nslookup):
#   dig example.com                        answered, with an address
#   dig @8.8.8.8 use-application-dns.net   status: NXDOMAIN, and the AUTHORITY section names
#                                          schooldns.invalid: the query to Google was answered by
#                                          schooldns (Windows: nslookup use-application-dns.net 8.8.8.8
#                                          says "Non-existent domain")
#   dig @8.8.8.8 +tcp use-application-dns.net   the same over TCP
#   dig +tls @1.1.1.1 example.com          fails (connection refused): DNS over TLS is blocked
#   dig +https @1.1.1.1 example.com        fails: DNS over HTTPS to a known resolver is blocked
#   curl -sS https://cloudflare-dns.com/   fails to resolve: schooldns blocks the name (bypass)
set -eu

: "${SCHOOLDNS:?set SCHOOLDNS to the address of the schooldns server, e.g. SCHOOLDNS=192.0.2.53}"
LAN="${LAN:-br-lan}"
RULES=/etc/nftables.d/50-schooldns.nft

case "$SCHOOLDNS" in
  *:*) family=ip6 ;;
  *) family=ip ;;
esac

# Chains and sets inside firewall4's `table inet fw4`, named so as not to meet its own.
rules() {
  cat <<NFT
# Written by schooldns's deploy/router/openwrt.sh: forces DNS through schooldns at $SCHOOLDNS.
# Run the script again rather than editing this file.

# doh-addresses begin
set schooldns_doh4 {
	type ipv4_addr
	elements = {
		1.1.1.1, 1.0.0.1, 1.1.1.2, 1.0.0.2, 1.1.1.3, 1.0.0.3,
		8.8.8.8, 8.8.4.4,
		9.9.9.9, 149.112.112.112, 9.9.9.10, 149.112.112.10, 9.9.9.11, 149.112.112.11,
		208.67.222.222, 208.67.220.220, 208.67.222.123, 208.67.220.123,
		94.140.14.14, 94.140.15.15, 94.140.14.15, 94.140.15.16,
		185.228.168.168, 185.228.169.168, 185.228.168.9, 185.228.169.9,
	}
}
set schooldns_doh6 {
	type ipv6_addr
	elements = {
		2606:4700:4700::1111, 2606:4700:4700::1001, 2606:4700:4700::1112,
		2606:4700:4700::1002, 2606:4700:4700::1113, 2606:4700:4700::1003,
		2001:4860:4860::8888, 2001:4860:4860::8844,
		2620:fe::fe, 2620:fe::9, 2620:fe::10, 2620:fe::fe:10, 2620:fe::11, 2620:fe::fe:11,
		2620:119:35::35, 2620:119:53::53,
		2a10:50c0::ad1:ff, 2a10:50c0::ad2:ff, 2a10:50c0::bad1:ff, 2a10:50c0::bad2:ff,
	}
}
# doh-addresses end

chain schooldns_redirect {
	type nat hook prerouting priority dstnat - 1; policy accept;
	iifname != "$LAN" return
	$family saddr $SCHOOLDNS return
	fib daddr type local return
	meta l4proto { udp, tcp } th dport 53 redirect to :53
}

chain schooldns_refuse {
	type filter hook forward priority filter - 1; policy accept;
	iifname != "$LAN" return
	$family saddr $SCHOOLDNS accept
	meta l4proto { udp, tcp } th dport { 53, 853 } reject
	ip daddr @schooldns_doh4 reject
	ip6 daddr @schooldns_doh6 reject
}
NFT
}

if [ "${1:-}" = --print ]; then
  rules
  exit 0
fi

uci -q delete dhcp.@dnsmasq[0].server || true
uci add_list dhcp.@dnsmasq[0].server="$SCHOOLDNS"
uci set dhcp.@dnsmasq[0].noresolv='1'
uci commit dhcp

mkdir -p /etc/nftables.d
rules >"$RULES"
/etc/init.d/dnsmasq restart
fw4 reload
echo "schooldns: the router's DNS forwards to $SCHOOLDNS, and DNS from $LAN is forced through it ($RULES)"
