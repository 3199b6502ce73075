#ifndef CHASHIMS_H
#define CHASHIMS_H
#include <stdint.h>

/* Raw-packet helpers of the HA daemon (AF_PACKET and raw IP sockets need root / CAP_NET_RAW).
 * Addresses and ports are in network byte order. Negative results are -errno. */

/* Gratuitous ARP for `ip` from `ifname`'s MAC: `count` rounds of a broadcast request
 * ("who-has ip tell ip") and a broadcast reply ("ip is-at mac"), as CTDB sends them. */
int twin_arp_announce(const char *ifname, uint32_t ip, int count);

/* Duplicate address detection (RFC 5227 probe): 1 if another host answers for `ip` within
 * `timeout_ms`, 0 if nobody does, -errno on error. */
int twin_arp_probe(const char *ifname, uint32_t ip, int timeout_ms);

/* A "tickle ACK" (CTDB): an ACK with seq 0 / ack 0 from src to dst. The client answers with
 * its real sequence numbers, this host (which has no such connection) answers that with a
 * RST, and the client drops its dead connection at once instead of waiting for TCP timeouts. */
int twin_send_tickle(uint32_t src_ip, uint16_t src_port, uint32_t dst_ip, uint16_t dst_port, int count);

/* pipe2(O_CLOEXEC): a helper's pipe must not leak into scripts spawned at the same moment. */
int twin_pipe_cloexec(int fds[2]);

#endif
