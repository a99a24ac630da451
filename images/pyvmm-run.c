/*
 * pyvmm-run: what the default guest's /init becomes for `pyvmm run -- CMD`.
 *
 * One process does everything around the command, because on a host that
 * emulates guest kernel mode (PVM) every process the guest starts costs
 * about half a second: it finds the command's virtio-console ports (named
 * pyvmm.stdin, pyvmm.stdout, pyvmm.stderr and pyvmm.control by pyvmm),
 * takes its words from the kernel command line or, with pyvmm.wait, from a
 * line on pyvmm.control (where a snapshot is taken while it waits, so the
 * line also says what time it is: pyvmm.time=SECONDS.NANOSECONDS), mounts
 * the shares (pyvmm.share=TAG:DIR[:ro], virtio-fs), runs the command
 * (pyvmm.argv64: its arguments, each ended by a NUL, base64; pyvmm.cwd64:
 * its directory) on the ports, and reports its status on the console:
 * "--- pyvmm.cmd end: status N ---" (128+N for signal N), then syncs and
 * restarts the machine, which ends pyvmm.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 262144
#define MAX_ARGS 4096

static const char *const names[] = {"pyvmm.stdin", "pyvmm.stdout", "pyvmm.stderr",
                                    "pyvmm.control"};
static char ports[4][300];

static void say(const char *fmt, const char *arg)
{
	printf(fmt, arg);
	fflush(stdout);
}

static int find_ports(void)
{
	int found = 0;
	DIR *dir = opendir("/sys/class/virtio-ports");
	struct dirent *e;

	if (!dir)
		return 0;
	while ((e = readdir(dir))) {
		char path[300], name[64] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(name, sizeof(name), f))
			name[strcspn(name, "\n")] = 0;
		fclose(f);
		for (int i = 0; i < 4; i++)
			if (!strcmp(name, names[i]) && !ports[i][0]) {
				snprintf(ports[i], sizeof(ports[i]), "/dev/%s", e->d_name);
				found++;
			}
	}
	closedir(dir);
	return found == 4;
}

static int unbase64(const char *in, char *out, size_t room)
{
	static const char digits[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned bits = 0, have = 0;
	size_t n = 0;

	for (; *in && *in != '='; in++) {
		const char *d = strchr(digits, *in);

		if (!d || !*in)
			return -1;
		bits = (bits << 6) | (unsigned)(d - digits);
		have += 6;
		if (have >= 8) {
			have -= 8;
			if (n >= room)
				return -1;
			out[n++] = (char)(bits >> have);
		}
	}
	return (int)n;
}

static void mkdirs(char *path)
{
	for (char *p = path + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(path, 0755);
			*p = '/';
		}
	mkdir(path, 0755);
}

static void share(char *spec)
{
	char *dir = strchr(spec, ':'), *mode;

	if (!dir)
		return;
	*dir++ = 0;
	mode = strchr(dir, ':');
	if (mode)
		*mode++ = 0;
	mkdirs(dir);
	if (mount(spec, dir, "virtiofs", mode && !strcmp(mode, "ro") ? MS_RDONLY : 0, NULL))
		say("pyvmm guest: could not mount the share on %s\n", dir);
}

static char line[MAX_LINE], argbuf[MAX_LINE], cwd[4096];

int main(void)
{
	char *argv[MAX_ARGS + 1], *word, *save;
	int argc = 0, n, fd, status;
	pid_t child;
	struct timespec pause = {0, 50 * 1000 * 1000};

	for (int tries = 0; !find_ports() && tries < 100; tries++)
		nanosleep(&pause, NULL);
	if (!ports[3][0]) {
		say("pyvmm guest: %s\n", "the command's ports did not appear");
		goto end;
	}
	fd = open("/proc/cmdline", O_RDONLY);
	n = fd >= 0 ? (int)read(fd, line, sizeof(line) - 1) : -1;
	line[n > 0 ? n : 0] = 0;
	if (strstr(line, " pyvmm.wait") || !strncmp(line, "pyvmm.wait", 10)) {
		say("%s\n", "pyvmm guest: waiting for a command");
		fd = open(ports[3], O_RDONLY);
		n = 0;
		while (fd >= 0 && n < (int)sizeof(line) - 1) {
			int got = (int)read(fd, line + n, sizeof(line) - 1 - (size_t)n);

			if (got <= 0)
				break;
			n += got;
			if (memchr(line + n - got, '\n', (size_t)got))
				break;
		}
		line[n > 0 ? n : 0] = 0;
	}
	strcpy(cwd, "/");
	for (word = strtok_r(line, " \n", &save); word; word = strtok_r(NULL, " \n", &save)) {
		if (!strncmp(word, "pyvmm.share=", 12)) {
			share(word + 12);
		} else if (!strncmp(word, "pyvmm.cwd64=", 12)) {
			n = unbase64(word + 12, cwd, sizeof(cwd) - 1);
			cwd[n > 0 ? n : 0] = 0;
		} else if (!strncmp(word, "pyvmm.time=", 11)) {
			char *dot;
			struct timespec now = {strtoll(word + 11, &dot, 10), 0};

			if (*dot == '.')
				now.tv_nsec = strtol(dot + 1, NULL, 10) % 1000000000;
			clock_settime(CLOCK_REALTIME, &now);
		} else if (!strncmp(word, "pyvmm.argv64=", 13)) {
			n = unbase64(word + 13, argbuf, sizeof(argbuf) - 1);
			for (int at = 0; n > 0 && at < n && argc < MAX_ARGS; at += (int)strlen(argbuf + at) + 1)
				argv[argc++] = argbuf + at;
		}
	}
	argv[argc] = NULL;
	say("%s\n", "--- pyvmm.cmd begin ---");
	if (!argc) {
		say("%s\n", "pyvmm guest: no command (pyvmm.argv64)");
		status = 125;
		goto report;
	}
	child = fork();
	if (child == 0) {
		int in = open(ports[0], O_RDONLY), out = open(ports[1], O_WRONLY),
		    err = open(ports[2], O_WRONLY);

		if (in < 0 || out < 0 || err < 0)
			_exit(125);
		dup2(in, 0);
		dup2(out, 1);
		dup2(err, 2);
		if (chdir(cwd)) {
			dprintf(2, "pyvmm guest: cd %s: %s\n", cwd, strerror(errno));
			_exit(126);
		}
		setsid();
		execvp(argv[0], argv);
		dprintf(2, "pyvmm guest: %s: %s\n", argv[0], strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}
	if (child < 0 || waitpid(child, &status, 0) < 0)
		status = 125;
	else if (WIFSIGNALED(status))
		status = 128 + WTERMSIG(status);
	else
		status = WEXITSTATUS(status);
report:
	printf("--- pyvmm.cmd end: status %d ---\n", status);
	fflush(stdout);
end:
	sync();
	reboot(RB_AUTOBOOT);
	return 0;
}
