#!/bin/sh
# Entrypoint of the redis stand-in, behaving like the upstream image's.
set -e

# first argument is an option (`--appendonly yes`, `-v`) or a `*.conf` file:
# it is meant for redis-server
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

# started as root: own the data folder, then run again as the redis user
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

# upstream builds redis with protected mode off: in a container the port is
# only reachable where it is published. Debian's binary has it on, so pass
# "--protected-mode no" right after the config file (if any) unless that file
# sets protected-mode itself; a later "--protected-mode yes" still wins.
if [ "$1" = 'redis-server' ]; then
    doProtectedMode=1
    case "${2:-}" in
        # informational runs take no other options
        -v|--version|-h|--help|--test-memory|--check-system) doProtectedMode= ;;
    esac
    configFile=
    if [ -f "${2:-}" ]; then
        configFile="$2"
        if grep -q '^protected-mode' "$configFile"; then
            doProtectedMode=
        fi
    fi
    if [ "$doProtectedMode" ]; then
        shift # redis-server
        if [ "$configFile" ]; then
            shift
        fi
        set -- --protected-mode no "$@"
        if [ "$configFile" ]; then
            set -- "$configFile" "$@"
        fi
        set -- redis-server "$@"
    fi
fi

# a restrictive umask for the data files, unless one was chosen
um="$(umask)"
if [ "$um" = '0022' ]; then
    umask 0077
fi

exec "$@"
