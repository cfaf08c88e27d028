/*
 * What k8stopo's C forwarders share: logging, fatal errors, usage, IP:PORT parsing.
 * Define PROGRAM (its name) and SYNOPSIS (its options) before including this header.
 */
#ifndef K8STOPO_FORWARDER_H
#define K8STOPO_FORWARDER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int log_enabled; /* --log: per-packet errors on stderr (the run's log file) */

static void logf_(const char *fmt, ...)
{
	va_list ap;
	if (!log_enabled)
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

static void die(const char *what)
{
	fprintf(stderr, PROGRAM ": %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(const char *why)
{
	fprintf(stderr, PROGRAM ": %s\nusage: " PROGRAM " " SYNOPSIS "\n", why);
	exit(2);
}

/* The next "--option value" pair of argv, NULL at its end; --log (no value) is taken here.
 * Start with *i = 0. */
static const char *next_option(int argc, char **argv, int *i, const char **value)
{
	while (++*i < argc) {
		if (!strcmp(argv[*i], "--log")) {
			log_enabled = 1;
			continue;
		}
		if (*i + 1 >= argc)
			usage("missing value");
		*value = argv[*i + 1];
		return argv[(*i)++];
	}
	return NULL;
}

/* "A.B.C.D:PORT" -> sockaddr_in; 0 on success. */
static int parse_hostport(const char *s, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, colon - s);
	host[colon - s] = '\0';
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

#endif
