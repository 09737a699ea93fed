# Force a school's DNS through schooldns on a MikroTik router (RouterOS 7).
# Change the two values on the first lines of the block below (schooldns: the IPv4 address of the
# schooldns server; lan: the interface list of the pupils' side), then paste the whole block into
# the router's terminal (Winbox: New Terminal; or ssh), or upload the file and run
# `/import file-name=mikrotik.rsc`. It is one block `{ ... }` so that its two values last to the end.
#
# What it does:
#   - the router's own DNS (which DHCP already hands to the devices) forwards to schooldns only;
#   - every DNS query from the pupils' side (the interface list LAN, as in RouterOS's default
#     configuration) to any other address, port 53 UDP and TCP, is answered by the router instead
#     (redirect), so by schooldns;
#   - DNS over TLS or QUIC (port 853) and the public resolvers that serve DNS over HTTPS
#     (deploy/router/doh-addresses.txt) are refused;
#   - a schooldns server on the pupils' side keeps its own way to its upstreams.
# Every rule's comment starts with "schooldns:", so they are easy to find and remove:
#   /ip firewall filter remove [find comment~"^schooldns:"]   (and nat, address-list, /ipv6 ...)
# If your forward chain accepts the pupils' traffic before the end, move the "schooldns:" filter
# rules above that rule (Winbox: IP > Firewall > Filter Rules, drag them up).
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
{
:local schooldns "192.0.2.53"
:local lan "LAN"

# The router's DNS asks schooldns only: not the provider's resolvers that DHCP or PPPoE hand it.
/ip dns set servers=$schooldns allow-remote-requests=yes
/ip dhcp-client set [find] use-peer-dns=no
/interface pppoe-client set [find] use-peer-dns=no
/ipv6 dhcp-client set [find] use-peer-dns=no

/ip firewall nat add chain=dstnat in-interface-list=$lan src-address=!$schooldns protocol=udp dst-port=53 \
    action=redirect to-ports=53 comment="schooldns: DNS from the pupils goes to this router"
/ip firewall nat add chain=dstnat in-interface-list=$lan src-address=!$schooldns protocol=tcp dst-port=53 \
    action=redirect to-ports=53 comment="schooldns: DNS from the pupils goes to this router"

# doh-addresses begin
:foreach address in={1.1.1.1; 1.0.0.1; 1.1.1.2; 1.0.0.2; 1.1.1.3; 1.0.0.3; \
    8.8.8.8; 8.8.4.4; \
    9.9.9.9; 149.112.112.112; 9.9.9.10; 149.112.112.10; 9.9.9.11; 149.112.112.11; \
    208.67.222.222; 208.67.220.220; 208.67.222.123; 208.67.220.123; \
    94.140.14.14; 94.140.15.15; 94.140.14.15; 94.140.15.16; \
    185.228.168.168; 185.228.169.168; 185.228.168.9; 185.228.169.9} do={
  /ip firewall address-list add list=schooldns-doh address=$address comment="schooldns: DNS over HTTPS"
}
:foreach address in={2606:4700:4700::1111; 2606:4700:4700::1001; 2606:4700:4700::1112; \
    2606:4700:4700::1002; 2606:4700:4700::1113; 2606:4700:4700::1003; \
    2001:4860:4860::8888; 2001:4860:4860::8844; \
    2620:fe::fe; 2620:fe::9; 2620:fe::10; 2620:fe::fe:10; 2620:fe::11; 2620:fe::fe:11; \
    2620:119:35::35; 2620:119:53::53; \
    2a10:50c0::ad1:ff; 2a10:50c0::ad2:ff; 2a10:50c0::bad1:ff; 2a10:50c0::bad2:ff} do={
  /ipv6 firewall address-list add list=schooldns-doh address=$address comment="schooldns: DNS over HTTPS"
}
# doh-addresses end

/ip firewall filter add chain=forward in-interface-list=$lan src-address=!$schooldns protocol=tcp dst-port=53,853 \
    action=reject reject-with=tcp-reset comment="schooldns: no DNS or DNS over TLS past schooldns"
/ip firewall filter add chain=forward in-interface-list=$lan src-address=!$schooldns protocol=udp dst-port=53,853 \
    action=reject reject-with=icmp-port-unreachable comment="schooldns: no DNS or DNS over QUIC past schooldns"
/ip firewall filter add chain=forward in-interface-list=$lan src-address=!$schooldns dst-address-list=schooldns-doh \
    action=reject reject-with=icmp-network-unreachable comment="schooldns: no DNS over HTTPS to known resolvers"

# IPv6: the devices use the router's DNS; any other DNS, DNS over TLS and the known resolvers are refused.
/ipv6 firewall filter add chain=forward in-interface-list=$lan protocol=tcp dst-port=53,853 \
    action=reject reject-with=tcp-reset comment="schooldns: no DNS or DNS over TLS past schooldns"
/ipv6 firewall filter add chain=forward in-interface-list=$lan protocol=udp dst-port=53,853 \
    action=reject reject-with=icmp-no-route comment="schooldns: no DNS or DNS over QUIC past schooldns"
/ipv6 firewall filter add chain=forward in-interface-list=$lan dst-address-list=schooldns-doh \
    action=reject reject-with=icmp-no-route comment="schooldns: no DNS over HTTPS to known resolvers"

:put "schooldns: the router's DNS forwards to $schooldns, and DNS from $lan is forced through it"
}
