<#
.SYNOPSIS
    Guest-side installation of kepoch and hand-off to `kepochctl ab` on real Windows guests.

.DESCRIPTION
    Import this module in an elevated Windows PowerShell 5.1 or PowerShell 7 session inside the guest:

        Import-Module C:\kepoch\scripts\KepochGuest.psm1
        Install-KepochDriver -PackagePath C:\kepoch\package
        Invoke-KepochAB -Rounds 8 -OutputPath C:\kepoch\results

    It installs/uninstalls the driver package test-scripts/package.sh builds (kepoch.sys, kepoch.inf,
    kepochctl.exe, the test certificate kepoch-test.cer), reports the boot configuration and processor
    topology (bcdedit, the OS's hot-add flag) and hands the A/B to `kepochctl ab`, which writes the
    registry, restarts the service, runs the load, writes one guest JSON per round and strategy and
    restores what it found. The A/B logic lives in kepochctl (tested Rust), not here.
    kepochctl.exe needs Windows 10 / Windows Server 2016 or later (x64).
#>

Set-StrictMode -Version Latest

$script:ServiceName = 'kepoch'
$script:ToolDirectory = Join-Path $env:ProgramFiles 'kepoch'
$script:StateKey = 'HKLM:\SOFTWARE\kepoch'

<#
.SYNOPSIS
    Throws unless the current process runs elevated (as an administrator).
#>
function Assert-KepochAdministrator {
    [CmdletBinding()]
    param()
    $principal = New-Object System.Security.Principal.WindowsPrincipal([System.Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $principal.IsInRole([System.Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'kepoch: this command needs an elevated PowerShell (Run as administrator).'
    }
}

<#
.SYNOPSIS
    Returns the boot configuration of the current boot entry (`bcdedit /enum {current}`) as a hashtable.
.DESCRIPTION
    Element names (testsigning, maxproc, groupsize, numproc) are not localized; values such as Yes may be.
#>
function Get-KepochBootConfiguration {
    [CmdletBinding()]
    [OutputType([hashtable])]
    param()
    $lines = & bcdedit.exe /enum '{current}' 2>&1
    if ($LASTEXITCODE -ne 0) { throw "kepoch: 'bcdedit /enum {current}' failed ($LASTEXITCODE): $($lines -join ' ')" }
    $config = @{}
    foreach ($line in $lines) {
        if ("$line" -match '^\s*([A-Za-z][A-Za-z0-9]*)\s+(.+?)\s*$') { $config[$Matches[1].ToLowerInvariant()] = $Matches[2] }
    }
    return $config
}

<#
.SYNOPSIS
    Reports the processor topology, the boot options that shape it and whether the OS supports hot-add.
.DESCRIPTION
    Counts come from kernel32 GetMaximumProcessorCount / GetActiveProcessorCount (0xFFFF: all groups).
    hot_add_supported is bit 0x20 of KUSER_SHARED_DATA.SharedDataFlags (0x7FFE02F0), set only where
    dynamic partitioning is licensed (Server editions): without it a "hot-add" run measures nothing.
#>
function Get-KepochTopology {
    [CmdletBinding()]
    param()
    if (-not ('Kepoch.Native' -as [type])) {
        Add-Type -Namespace 'Kepoch' -Name 'Native' -MemberDefinition @'
[DllImport("kernel32.dll")] public static extern ushort GetMaximumProcessorGroupCount();
[DllImport("kernel32.dll")] public static extern uint GetActiveProcessorCount(ushort groupNumber);
[DllImport("kernel32.dll")] public static extern uint GetMaximumProcessorCount(ushort groupNumber);
'@
    }
    $native = 'Kepoch.Native' -as [type]
    $groups = @()
    for ($g = 0; $g -lt $native::GetMaximumProcessorGroupCount(); $g++) {
        $groups += [pscustomobject]@{ group = $g; max = [int] $native::GetMaximumProcessorCount([uint16] $g); active = [int] $native::GetActiveProcessorCount([uint16] $g) }
    }
    $flags = [System.Runtime.InteropServices.Marshal]::ReadInt32([IntPtr] 0x7FFE02F0)
    $bcd = @{}
    try { $bcd = Get-KepochBootConfiguration } catch { Write-Verbose "bcdedit unavailable: $_" }
    $options = (Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control' -Name SystemStartOptions).SystemStartOptions
    [pscustomobject]@{
        max_processors     = [int] $native::GetMaximumProcessorCount([uint16] 0xFFFF)
        active_processors  = [int] $native::GetActiveProcessorCount([uint16] 0xFFFF)
        max_groups         = $groups.Count
        groups             = $groups
        hot_add_supported  = [bool] ($flags -band 0x20)
        bcd_maxproc        = $bcd['maxproc']
        bcd_groupsize      = $bcd['groupsize']
        bcd_testsigning    = $bcd['testsigning']
        testsigning_active = [bool] ("$options" -match '\bTESTSIGNING\b')
    }
}

<#
.SYNOPSIS
    Returns the path of kepochctl.exe: $env:KEPOCHCTL, the installed copy, or PATH.
#>
function Get-KepochCtlPath {
    [CmdletBinding()]
    [OutputType([string])]
    param()
    if ($env:KEPOCHCTL -and (Test-Path -LiteralPath $env:KEPOCHCTL)) { return $env:KEPOCHCTL }
    $installed = Join-Path $script:ToolDirectory 'kepochctl.exe'
    if (Test-Path -LiteralPath $installed) { return $installed }
    $command = Get-Command -Name 'kepochctl.exe' -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($command) { return $command.Source }
    throw "kepoch: kepochctl.exe not found (set `$env:KEPOCHCTL, run Install-KepochDriver, or add it to PATH)."
}

<#
.SYNOPSIS
    Returns the "Store:Thumbprint" certificates kepoch's install added (recorded in HKLM:\SOFTWARE\kepoch).
#>
function Get-KepochAddedCertificate {
    [CmdletBinding()]
    [OutputType([string[]])]
    param()
    if (-not (Test-Path -LiteralPath $script:StateKey)) { return @() }
    return @((Get-Item -LiteralPath $script:StateKey).GetValue('AddedCertificates', @()))
}

<#
.SYNOPSIS
    Records "Store:Thumbprint" entries as added by kepoch's install.
.PARAMETER Entry
    The entries to add to the record.
#>
function Add-KepochCertificateRecord {
    [CmdletBinding()]
    param([Parameter(Mandatory = $true)] [string[]] $Entry)
    $all = @(Get-KepochAddedCertificate) + $Entry | Select-Object -Unique
    if (-not (Test-Path -LiteralPath $script:StateKey)) { New-Item -Path $script:StateKey -Force | Out-Null }
    New-ItemProperty -LiteralPath $script:StateKey -Name 'AddedCertificates' -PropertyType MultiString -Value ([string[]] $all) -Force | Out-Null
}

<#
.SYNOPSIS
    Adds a certificate to the LocalMachine Root and TrustedPublisher stores where missing, recording what it added.
.PARAMETER Certificate
    The certificate (X509Certificate2).
#>
function Add-KepochCertificate {
    [CmdletBinding()]
    param([Parameter(Mandatory = $true)] [System.Security.Cryptography.X509Certificates.X509Certificate2] $Certificate)
    foreach ($name in @('Root', 'TrustedPublisher')) {
        $store = New-Object System.Security.Cryptography.X509Certificates.X509Store($name, 'LocalMachine')
        $store.Open('ReadWrite')
        try {
            if ($store.Certificates.Find('FindByThumbprint', $Certificate.Thumbprint, $false).Count -eq 0) {
                $store.Add($Certificate)
                Add-KepochCertificateRecord -Entry "${name}:$($Certificate.Thumbprint)"
            }
        } finally { $store.Close() }
    }
}

<#
.SYNOPSIS
    Makes and signs kepoch.cat for a staged package (Inf2Cat, signtool from the WDK), or returns $false without them.
.DESCRIPTION
    The Linux-built package carries no catalog and no private key: this creates a guest-local self-signed
    code-signing certificate (LocalMachine\My), trusts it (recorded, removed by Uninstall-KepochDriver) and signs
    the catalog with it.
.PARAMETER StagingPath
    Folder with kepoch.inf and kepoch.sys; the catalog is written there.
#>
function New-KepochCatalog {
    [CmdletBinding()]
    [OutputType([bool])]
    param([Parameter(Mandatory = $true)] [string] $StagingPath)
    $tools = @{}
    foreach ($name in @('Inf2Cat.exe', 'signtool.exe')) {
        $hit = Get-Command -Name $name -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1 -ExpandProperty Source
        $kits = Join-Path ${env:ProgramFiles(x86)} 'Windows Kits\10\bin'
        if (-not $hit -and (Test-Path -LiteralPath $kits)) {
            $hit = Get-ChildItem -LiteralPath $kits -Recurse -Filter $name -ErrorAction SilentlyContinue |
                Where-Object { $_.FullName -match '\\x64\\' } | Sort-Object FullName -Descending | Select-Object -First 1 -ExpandProperty FullName
        }
        if (-not $hit) { return $false }
        $tools[$name] = $hit
    }
    $out = & $tools['Inf2Cat.exe'] "/driver:$StagingPath" '/os:10_X64,Server10_X64' 2>&1
    if ($LASTEXITCODE -ne 0) { throw "kepoch: Inf2Cat failed ($LASTEXITCODE): $($out -join ' ')" }
    $signer = New-SelfSignedCertificate -Type CodeSigningCert -Subject 'CN=kepoch catalog test signing (this guest)' `
        -CertStoreLocation 'Cert:\LocalMachine\My' -KeyExportPolicy NonExportable -NotAfter (Get-Date).AddYears(1)
    Add-KepochCertificateRecord -Entry "My:$($signer.Thumbprint)"
    Add-KepochCertificate -Certificate (New-Object System.Security.Cryptography.X509Certificates.X509Certificate2(, $signer.RawData))
    $out = & $tools['signtool.exe'] sign /sm /s My /sha1 $signer.Thumbprint /fd SHA256 (Join-Path $StagingPath 'kepoch.cat') 2>&1
    if ($LASTEXITCODE -ne 0) { throw "kepoch: signtool could not sign kepoch.cat ($LASTEXITCODE): $($out -join ' ')" }
    return $true
}

<#
.SYNOPSIS
    Installs the kepoch driver package (kepoch.sys, kepoch.inf, kepochctl.exe, kepoch-test.cer) and starts it.
.DESCRIPTION
    Trusts kepoch-test.cer (recorded; Uninstall-KepochDriver removes exactly what was added), checks test signing
    is active in this boot (unless -SkipTestSigningCheck) and that kepoch.sys is signed, copies kepochctl.exe to
    $env:ProgramFiles\kepoch, then installs: with the WDK's Inf2Cat and signtool present, a catalog is made and
    signed here and the INF staged with pnputil; otherwise the non-PnP kernel service is created with sc.exe
    (the kernel checks only the embedded signature). Finally `kepochctl service restart` (unless -NoStart):
    Win32 error 577 means the signature was not accepted.
.PARAMETER PackagePath
    Folder holding kepoch.sys, kepoch.inf, kepochctl.exe and (normally) kepoch-test.cer.
.PARAMETER SkipTestSigningCheck
    Install even if test signing is off.
.PARAMETER NoStart
    Do not start the service.
#>
function Install-KepochDriver {
    [CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
    param([Parameter(Mandatory = $true)] [string] $PackagePath, [switch] $SkipTestSigningCheck, [switch] $NoStart)
    Assert-KepochAdministrator
    $package = (Resolve-Path -LiteralPath $PackagePath -ErrorAction Stop).ProviderPath
    foreach ($name in @('kepoch.sys', 'kepoch.inf', 'kepochctl.exe')) {
        if (-not (Test-Path -LiteralPath (Join-Path $package $name))) { throw "kepoch: '$name' is missing from '$package'." }
    }
    if (-not $SkipTestSigningCheck -and -not (Get-KepochTopology).testsigning_active) {
        throw 'kepoch: test signing is not active in this boot: bcdedit /set {current} testsigning on (Secure Boot off), then reboot.'
    }
    if (-not $PSCmdlet.ShouldProcess("service '$script:ServiceName' from $package", 'Install kepoch driver')) { return }
    $cer = Join-Path $package 'kepoch-test.cer'
    if (Test-Path -LiteralPath $cer) { Add-KepochCertificate -Certificate (New-Object System.Security.Cryptography.X509Certificates.X509Certificate2($cer)) }
    else { Write-Warning "kepoch: no kepoch-test.cer in '$package': the signer of kepoch.sys must already be trusted." }
    $signature = Get-AuthenticodeSignature -FilePath (Join-Path $package 'kepoch.sys')
    if ($signature.Status -eq 'NotSigned') { throw 'kepoch: kepoch.sys is not signed; build the package with test-scripts/package.sh.' }
    if (-not (Test-Path -LiteralPath $script:ToolDirectory)) { New-Item -ItemType Directory -Path $script:ToolDirectory -Force | Out-Null }
    Copy-Item -LiteralPath (Join-Path $package 'kepochctl.exe') -Destination $script:ToolDirectory -Force

    $staging = Join-Path $env:TEMP 'kepoch-package'
    if (Test-Path -LiteralPath $staging) { Remove-Item -LiteralPath $staging -Recurse -Force }
    New-Item -ItemType Directory -Path $staging -Force | Out-Null
    Copy-Item -LiteralPath (Join-Path $package 'kepoch.sys'), (Join-Path $package 'kepoch.inf') -Destination $staging
    if (New-KepochCatalog -StagingPath $staging) {
        $out = & pnputil.exe /add-driver (Join-Path $staging 'kepoch.inf') /install 2>&1
        if (-not (Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue)) { throw "kepoch: pnputil /add-driver failed: $($out -join ' ')" }
        Write-Host 'kepoch: installed from the INF (catalog made and signed in this guest)'
    } else {
        Copy-Item -LiteralPath (Join-Path $package 'kepoch.sys') -Destination (Join-Path $env:SystemRoot 'System32\drivers\kepoch.sys') -Force
        $out = & sc.exe create $script:ServiceName type= kernel start= demand error= normal binPath= 'System32\drivers\kepoch.sys' 2>&1
        if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 1073) { throw "kepoch: sc.exe create failed ($LASTEXITCODE): $($out -join ' ')" }
        Write-Host 'kepoch: installed as a kernel service (no Inf2Cat/signtool here, so no catalog)'
    }
    if (-not $NoStart) {
        $out = & (Get-KepochCtlPath) service restart 2>&1
        if ($LASTEXITCODE -ne 0) { throw "kepoch: installed, but the driver does not run: $($out -join ' ')" }
    }
    Get-Service -Name $script:ServiceName
}

<#
.SYNOPSIS
    Stops and removes the kepoch driver, its driver-store package, kepochctl.exe and the certificates its install added.
.PARAMETER KeepTool
    Leave kepochctl.exe in $env:ProgramFiles\kepoch.
#>
function Uninstall-KepochDriver {
    [CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]
    param([switch] $KeepTool)
    Assert-KepochAdministrator
    if (-not $PSCmdlet.ShouldProcess("service '$script:ServiceName'", 'Uninstall kepoch driver')) { return }
    & sc.exe stop $script:ServiceName 2>&1 | Out-Null
    # The block of `pnputil /enum-drivers` holding both oemNN.inf and kepoch.inf is ours, whatever the language.
    $enum = (& pnputil.exe /enum-drivers 2>&1 | ForEach-Object { "$_" }) -join "`n"
    foreach ($block in ($enum -split "`n\s*`n")) {
        if ($block -match '(?i)\bkepoch\.inf\b' -and $block -match '(?i)\b(oem\d+\.inf)\b') { & pnputil.exe /delete-driver $Matches[1] /uninstall /force 2>&1 | Out-Null }
    }
    if (Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue) {
        $out = & sc.exe delete $script:ServiceName 2>&1
        if ($LASTEXITCODE -ne 0) { throw "kepoch: sc.exe delete failed ($LASTEXITCODE): $($out -join ' ')" }
    }
    Remove-Item -LiteralPath (Join-Path $env:SystemRoot 'System32\drivers\kepoch.sys') -Force -ErrorAction SilentlyContinue
    if (-not $KeepTool -and (Test-Path -LiteralPath $script:ToolDirectory)) { Remove-Item -LiteralPath $script:ToolDirectory -Recurse -Force }
    foreach ($entry in @(Get-KepochAddedCertificate)) {
        $name, $thumbprint = $entry -split ':', 2
        $path = "Cert:\LocalMachine\$name\$thumbprint"
        if (Test-Path -LiteralPath $path) { Remove-Item -LiteralPath $path -DeleteKey:($name -eq 'My') -Force }
    }
    if (Test-Path -LiteralPath $script:StateKey) { Remove-Item -LiteralPath $script:StateKey -Recurse -Force }
}

<#
.SYNOPSIS
    Runs the guest A/B with `kepochctl ab` and returns the files it wrote.
.DESCRIPTION
    kepochctl does everything: per round (the order of Strategies rotates) and strategy it writes the
    registry, restarts the service, resets the counters, runs the load, waits for announced hot-adds, writes
    round-NN-STRATEGY.json into OutputPath (a strategy that refuses to load is recorded with loaded = false),
    and restores the registry values and the service state it found, also after a failure or Ctrl-C.
    Throws with kepochctl's message when it exits non-zero (2: bad arguments, 1: the environment).
.PARAMETER OutputPath
    Folder for the JSON files (created when missing; must be writable).
.PARAMETER Rounds
    Rounds (default 8).
.PARAMETER Strategies
    Strategies (default lazy, callback, eager).
.PARAMETER LoadRate
    Load generator rate (operations per second).
.PARAMETER LoadSeconds
    Load duration per round and strategy.
.PARAMETER IdleDeactivation
    Registry IdleDeactivation for every round (-1: leave as found).
.PARAMETER CyclePeriodMicroseconds
    Registry CyclePeriodMicroseconds for every round (0: leave as found).
.PARAMETER WaitHotAdd
    Processors the host hot-adds during each round (the round waits for them).
.PARAMETER HotAddFile
    A file the host writes during a round with the number of processors it hot-adds.
.EXAMPLE
    Invoke-KepochAB -Rounds 8 -OutputPath C:\kepoch\results -LoadSeconds 60
#>
function Invoke-KepochAB {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param(
        [Parameter(Mandatory = $true)] [string] $OutputPath,
        [int] $Rounds = 8,
        [string[]] $Strategies = @('lazy', 'callback', 'eager'),
        [int] $LoadRate = 100000,
        [int] $LoadSeconds = 30,
        [int] $IdleDeactivation = -1,
        [int] $CyclePeriodMicroseconds = 0,
        [int] $WaitHotAdd = 0,
        [string] $HotAddFile
    )
    $arguments = @('ab', '--rounds', "$Rounds", '--strategies', ($Strategies -join ','), '--rate', "$LoadRate",
        '--seconds', "$LoadSeconds", '--wait-hot-add', "$WaitHotAdd", '--out', $OutputPath)
    if ($IdleDeactivation -ge 0) { $arguments += @('--idle-deactivation', "$IdleDeactivation") }
    if ($CyclePeriodMicroseconds -gt 0) { $arguments += @('--cycle-period-us', "$CyclePeriodMicroseconds") }
    if ($HotAddFile) { $arguments += @('--hot-add-file', $HotAddFile) }
    $exe = Get-KepochCtlPath
    if (-not $PSCmdlet.ShouldProcess("$exe $($arguments -join ' ')", 'Run the kepoch A/B')) { return }
    & $exe @arguments 2>&1 | ForEach-Object { Write-Host "$_" }
    if ($LASTEXITCODE -ne 0) { throw "kepoch: 'kepochctl $($arguments -join ' ')' failed with exit code $LASTEXITCODE (message above)." }
    Get-ChildItem -LiteralPath $OutputPath -Filter 'round-*.json'
}

Export-ModuleMember -Function @(
    'Get-KepochBootConfiguration', 'Get-KepochTopology', 'Install-KepochDriver', 'Uninstall-KepochDriver', 'Invoke-KepochAB'
)
