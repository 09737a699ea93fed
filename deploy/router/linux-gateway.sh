#!/bin/sh
# Force a school's DNS through schooldns on a Linux gateway (Debian or Ubuntu, nftables): the
# machine that routes the pupils' network to the internet. Run it as root on the gateway:
#
#   SCHOOLDNS=192.0.2.53 LAN=eth1 sh linux-gateway.sh
#
# (`sh linux-gateway.sh --print` with the same variables prints the rules and changes nothing.)
# SCHOOLDNS   the IPv4 address of the schooldns server (this gateway, a server on the pupils'
#             network, or the province's server)
# SCHOOLDNS6  optional: its IPv6 address, if the pupils' devices reach it over IPv6
# LAN         the network interface on the pupils' side
#
# It writes /etc/schooldns-gateway.nft, a table of its own beside any other rules, loads it, and
# includes it in /etc/nftables.conf so that it is loaded at boot. Run it again after a change; it
# replaces its table. What the table does, for traffic coming in on LAN:
#   - every DNS query (port 53, UDP and TCP) to any other address goes to schooldns instead (DNAT);
#   - DNS over TLS or QUIC (port 853) is refused, and so is IPv6 DNS to anything but SCHOOLDNS6;
#   - the public resolvers that serve DNS over HTTPS (deploy/router/doh-addresses.txt) are refused;
#   - the schooldns server's own queries to its upstreams are left alone.
# Give the pupils' devices SCHOOLDNS as their DNS server by DHCP as well (and SCHOOLDNS6 by
# router advertisements): then the redirect is only a safety net.
#
# In schooldns, the school's policy file must name the address schooldns sees: this gateway's
# public address if schooldns is outside the school (the gateway translates addresses), else the
# pupils' network. `schooldns explain --client ADDRESS NAME` on the server shows which school an
# address belongs to.
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

: "${SCHOOLDNS:?set SCHOOLDNS to the IPv4 address of the schooldns server, e.g. SCHOOLDNS=192.0.2.53}"
: "${LAN:?set LAN to the interface on the pupils side, e.g. LAN=eth1}"
SCHOOLDNS6="${SCHOOLDNS6:-}"
RULES=/etc/schooldns-gateway.nft

if [ -n "$SCHOOLDNS6" ]; then
  dns6_exempt="ip6 saddr $SCHOOLDNS6 accept"
  dns6_refuse="meta l4proto { udp, tcp } th dport 53 ip6 daddr != $SCHOOLDNS6 reject"
else
  dns6_exempt="# no SCHOOLDNS6: every IPv6 DNS query through this gateway is refused"
  dns6_refuse="meta nfproto ipv6 meta l4proto { udp, tcp } th dport 53 reject"
fi

rules() {
  cat <<NFT
#!/usr/sbin/nft -f
# Written by schooldns's deploy/router/linux-gateway.sh: forces DNS through schooldns at $SCHOOLDNS.
# Run the script again rather than editing this file.
table inet schooldns_gateway
delete table inet schooldns_gateway

table inet schooldns_gateway {
	# doh-addresses begin
	set doh4 {
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
	set doh6 {
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

	chain redirect_dns {
		type nat hook prerouting priority dstnat; policy accept;
		iifname != "$LAN" return
		ip saddr $SCHOOLDNS return
		ip daddr != $SCHOOLDNS meta l4proto { udp, tcp } th dport 53 dnat ip to $SCHOOLDNS
	}

	chain back_through_here {
		type nat hook postrouting priority srcnat; policy accept;
		# A schooldns on the pupils' own network: its answer to a redirected query must come back
		# through this gateway, which undoes the redirect.
		oifname "$LAN" ip daddr $SCHOOLDNS meta l4proto { udp, tcp } th dport 53 ct status dnat masquerade
	}

	chain refuse_bypass {
		type filter hook forward priority filter; policy accept;
		iifname != "$LAN" return
		ip saddr $SCHOOLDNS accept
		$dns6_exempt
		meta l4proto { udp, tcp } th dport 853 reject
		ip daddr @doh4 reject
		ip6 daddr @doh6 reject
		$dns6_refuse
	}
}
NFT
}

if [ "${1:-}" = --print ]; then
  rules
  exit 0
fi
rules >"$RULES.new"
nft -c -f "$RULES.new"
mv "$RULES.new" "$RULES"
nft -f "$RULES"
if ! grep -qs "include \"$RULES\"" /etc/nftables.conf; then
  printf '\ninclude "%s"\n' "$RULES" >>/etc/nftables.conf
fi
systemctl enable --quiet nftables.service 2>/dev/null || true
echo "schooldns: DNS from $LAN now goes to $SCHOOLDNS; rules in $RULES, loaded at boot from /etc/nftables.conf"
